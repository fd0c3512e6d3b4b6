//! Dashboard assets (placeholder until the dashboard lands).

use axum::Router;

/// Routes serving the dashboard files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
