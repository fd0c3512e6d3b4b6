//! The dashboard under a burst: 2,000 quick tasks (a stub `ansible-playbook`
//! that exits at once) published over MQTT to an appliance that keeps 200
//! finished tasks (and queues 100: the rest of the burst is refused, which
//! also ends tasks). The page must stay responsive (main-thread long tasks,
//! measured in the page with the Performance API) and end up showing exactly
//! the server's history.

use std::os::unix::fs::PermissionsExt;

use crate::*;

/// Requests of the burst.
const BURST: usize = 2000;
/// The appliance's `worker.history_limit`.
const HISTORY: usize = 200;
/// Longest main-thread task allowed during the burst (ms). Not a speed
/// target (the figures are printed): a bound that only the old behaviour
/// breaks. On a loaded 2-core machine the page, sharing it with the worker
/// and its 2,000 runs, measured up to 1.4 s; redrawing the whole table for
/// every new task (the page before the trimmed event) froze it for over
/// 100 s.
const LONGEST_TASK_MS: f64 = 10_000.0;
/// Total main-thread long-task time allowed during the burst (ms): measured
/// 3.6–5.2 s, and 181 s with the whole-table redraw.
const TOTAL_LONG_TASKS_MS: f64 = 40_000.0;

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_keeps_up_with_a_burst_and_shows_the_servers_history() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run scripts/setup"
        );
    }
    let stub_dir = TempDir::new().unwrap();
    let stub = stub_dir.path().join("ansible-playbook");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let appliance = Appliance::start(&[], |dir, ports| {
        let config = example_config(dir, ports);
        let real = format!(
            "ansible_playbook_path = {:?}",
            ansible_playbook().display().to_string()
        );
        let config = replace_present(
            &config,
            &real,
            &format!("ansible_playbook_path = {:?}", stub.display().to_string()),
        );
        replace_present(
            &config,
            "history_limit = 1000",
            &format!("history_limit = {HISTORY}"),
        )
    });
    let url = appliance.http.url("/");
    let observer = Observer::start(appliance.ports.v5, "lab").await;
    let driver = ChromeDriver::start();
    let browser = driver.connect().await;

    let outcome = burst(&browser, &url, &appliance, &observer).await;
    if outcome.is_err() {
        let _ = save_screenshot(&browser, "dashboard-burst-failure.png").await;
    }
    let _ = browser.close().await;
    if let Err(error) = outcome {
        panic!(
            "{error:#}\n(see target/dashboard-burst-failure.png)\n---- worker log ----\n{}",
            appliance.worker.log()
        );
    }
}

async fn burst(
    browser: &Client,
    url: &str,
    appliance: &Appliance,
    observer: &Observer,
) -> Result<()> {
    browser.goto(url).await.context("open the dashboard")?;
    poll("the live stream", async || {
        let live = script(
            browser,
            "return document.querySelector('#live').dataset.live;",
            vec![],
        )
        .await;
        Ok((live == json!("live")).then_some(()))
    })
    .await?;
    browser
        .execute(
            "window.longTasks = []; \
             new PerformanceObserver((list) => { \
               for (const task of list.getEntries()) window.longTasks.push(task.duration); \
             }).observe({type: 'longtask'});",
            vec![],
        )
        .await?;

    let prefix = unique("burst");
    for n in 0..BURST {
        observer
            .submit(json!({
                "task_id": format!("{prefix}-{n}"), "playbook": "hello.yml",
                "inventory": "inventory.yml",
            }))
            .await;
    }
    let finals = || {
        observer
            .all()
            .iter()
            .filter(|seen| {
                seen.doc["task_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&prefix))
                    && ["success", "failed", "cancelled", "timeout"]
                        .contains(&seen.doc["state"].as_str().unwrap_or_default())
            })
            .count()
    };
    let end = Instant::now() + 3 * DEADLINE;
    while finals() < BURST {
        ensure!(Instant::now() < end, "{} of {BURST} tasks ended", finals());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let history = ids(&appliance.http.get("/api/tasks?limit=500").json());
    ensure!(
        history.len() == HISTORY,
        "the server holds {} tasks",
        history.len()
    );
    let rows_now = "return [...document.querySelectorAll('#task-rows tr[data-task-id]')] \
                    .map((row) => row.dataset.taskId);";
    let shown = poll("the page to show the server's history", async || {
        let rows = script(browser, rows_now, vec![]).await;
        Ok((rows == json!(history)).then_some(()))
    })
    .await;
    let long: Vec<f64> =
        serde_json::from_value(script(browser, "return window.longTasks;", vec![]).await)?;
    let longest = long.iter().copied().fold(0.0, f64::max);
    let total: f64 = long.iter().sum();
    println!(
        "burst of {BURST}: {} long tasks on the page's main thread, longest {longest:.0} ms, \
         total {total:.0} ms",
        long.len()
    );
    if let Err(error) = shown {
        let rows = script(browser, rows_now, vec![]).await;
        let count = rows.as_array().map_or(0, Vec::len);
        bail!("{error}: the page shows {count} rows, the server {HISTORY}");
    }
    ensure!(
        longest <= LONGEST_TASK_MS && total <= TOTAL_LONG_TASKS_MS,
        "the page was unresponsive: {} long tasks, longest {longest:.0} ms, total {total:.0} ms",
        long.len()
    );
    Ok(())
}
