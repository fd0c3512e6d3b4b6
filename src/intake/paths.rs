//! Path containment for `playbook` and `inventory`: resolves the requested
//! path against the (canonical) playbook directory and refuses anything that
//! ends up outside it, lexically (`..`) or through a symlink. It also decides,
//! the way Ansible does, whether an `inventory` value is a file or an inline
//! host list.
//!
//! It reads the file system (canonicalisation, file type) but never opens or
//! parses a playbook or inventory.

use std::io;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::{SHOWN_PATH_CHARS, invalid, required_string, shown};
use crate::model::Inventory;

/// The canonical playbook file `value` names inside `dir`.
pub(super) fn playbook(value: Option<&Value>, dir: &Path) -> Result<PathBuf, String> {
    let requested = required_string(value, "playbook")?;
    let path = Path::new(requested);
    let shown_path = shown(requested, SHOWN_PATH_CHARS);
    if path.has_root() {
        return Err(invalid(
            "playbook",
            &format!("must be a path relative to the playbook directory: {shown_path}"),
        ));
    }
    let outside = || format!("Playbook outside the playbook directory: {shown_path}");
    if escapes_lexically(path) {
        return Err(outside());
    }
    let resolved = match dir.join(path).canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if is_missing(&e) => return Err(format!("Playbook not found: {shown_path}")),
        Err(e) => return Err(format!("Playbook cannot be resolved: {shown_path}: {e}")),
    };
    if !resolved.starts_with(dir) {
        return Err(outside());
    }
    if !resolved.is_file() {
        return Err(format!("Playbook is not a file: {shown_path}"));
    }
    Ok(resolved)
}

/// Follows Ansible's own reading of `-i <value>` (run with the playbook
/// directory as working directory): an existing path is an inventory file or
/// directory whatever its spelling, otherwise a value with a comma is a host
/// list. Existing paths must resolve inside the directory, so neither a
/// `../x,` host list nor a symlink can make Ansible read an outside inventory.
pub(super) fn inventory(value: Option<&Value>, dir: &Path) -> Result<Inventory, String> {
    let requested = required_string(value, "inventory")?;
    let shown_value = shown(requested, SHOWN_PATH_CHARS);
    if requested.starts_with('-') {
        // Inline lists are passed as a separate argv word after `-i`.
        return Err(invalid("inventory", "must not start with '-'"));
    }
    if Path::new(requested).has_root() {
        return Err(invalid(
            "inventory",
            &format!("must be relative to the playbook directory: {shown_value}"),
        ));
    }
    if let Some(file) = existing_inventory(requested, dir, &shown_value)? {
        return Ok(Inventory::File(file));
    }
    if !requested.ends_with(',') && requested.contains('/') {
        return Err(format!("Inventory not found: {shown_value}"));
    }
    if requested.split(',').all(|host| host.trim().is_empty()) {
        return Err(invalid(
            "inventory",
            "an inline host list must name at least one host",
        ));
    }
    if requested.ends_with(',') {
        return Ok(Inventory::Inline(requested.to_owned()));
    }
    // A single host (or `a,b`): Ansible only reads it as a host list with a
    // trailing comma; without one it expands `~`/`$VAR` and looks for a file.
    let hosts = format!("{requested},");
    Ok(match existing_inventory(&hosts, dir, &shown_value)? {
        // Ansible would read that file rather than the host list.
        Some(file) => Inventory::File(file),
        None => Inventory::Inline(hosts),
    })
}

/// The canonical path `requested` names relative to `dir`, if it exists; an
/// error if it exists (or lexically is) outside `dir` or is not a regular file
/// or directory.
fn existing_inventory(
    requested: &str,
    dir: &Path,
    shown_value: &str,
) -> Result<Option<PathBuf>, String> {
    let outside = || format!("Inventory outside the playbook directory: {shown_value}");
    if escapes_lexically(Path::new(requested)) {
        return Err(outside());
    }
    let resolved = match dir.join(requested).canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(format!("Inventory cannot be resolved: {shown_value}: {e}")),
    };
    if !resolved.starts_with(dir) {
        return Err(outside());
    }
    if !(resolved.is_file() || resolved.is_dir()) {
        return Err(format!(
            "Inventory is not a file or directory: {shown_value}"
        ));
    }
    Ok(Some(resolved))
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// True if `path` climbs above its starting directory by `..` alone. Only a
/// fast, symlink-blind first check: canonicalisation has the last word.
fn escapes_lexically(path: &Path) -> bool {
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}
