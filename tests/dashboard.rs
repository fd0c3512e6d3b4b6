//! The dashboard in a real browser: the appliance (example config, embedded
//! broker, free ports) serves `web/`, and Debian's Chromium, driven over
//! WebDriver by `chromedriver`, submits tasks through the form, follows them
//! live over SSE without a reload, opens the detail panel and cancels a run,
//! while a page of another origin fails to cancel it.
//!
//! Chromium and ChromeDriver come from `scripts/setup`; without them this test
//! fails (it never skips). It leaves `target/dashboard-screenshot.png` (and a
//! phone-width `dashboard-screenshot-phone.png`) behind to look at.

mod common;
mod dashboard {
    //! Further scenarios, each in a file of its own.
    pub mod burst;
}

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a headless Chromium on a closed network (the machine notes:
/// background networking would only produce refused connections).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
];

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_submits_follows_and_cancels_tasks_live() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run scripts/setup (it installs Debian's chromium and \
             chromium-driver)"
        );
    }
    let (_appliance, url) = start_appliance();
    let driver = ChromeDriver::start();
    let browser = driver.connect().await;

    let outcome = drive(&browser, &url).await;
    if outcome.is_err() {
        let _ = save_screenshot(&browser, "dashboard-failure.png").await;
    }
    let _ = browser.close().await;
    if let Err(error) = outcome {
        panic!(
            "{error:#}\n(see target/dashboard-failure.png)\n---- chromedriver log ----\n{}",
            driver.log()
        );
    }
}

/// The whole user story, through the page only.
async fn drive(browser: &Client, url: &str) -> Result<()> {
    browser.goto(url).await.context("open the dashboard")?;
    // Survives only as long as the page is not reloaded.
    browser
        .execute("window.dashboardTestMarker = 'no reload';", vec![])
        .await?;
    poll("the playbook list and the live stream", async || {
        let ready = script(
            browser,
            "return !!document.querySelector('#playbook option[value=\"hello.yml\"]') \
             && document.querySelector('#live').dataset.live === 'live' \
             && document.querySelector('#worker-connected').dataset.connected === 'true';",
            vec![],
        )
        .await;
        Ok((ready == json!(true)).then_some(()))
    })
    .await?;

    // A run to success: the row turns green by itself, the detail shows the
    // playbook's set_stats output and Ansible's log.
    let hello = submit(browser, "hello.yml", None).await?;
    wait_for_state(browser, &hello, "success").await?;
    row(browser, &hello).await?.click().await?;
    let output = poll("the output in the detail panel", async || {
        let text = browser
            .find(Locator::Id("detail-output"))
            .await?
            .text()
            .await?;
        Ok(text.contains("Hello from localhost").then_some(text))
    })
    .await?;
    ensure!(output.contains("\"greeting\""), "output: {output}");
    ensure!(
        text_of(browser, "detail-id").await? == hello,
        "detail shows another task"
    );
    poll("the log tail of the finished run", async || {
        let log = text_of(browser, "detail-log").await?;
        Ok((log.contains("TASK [Say hello]") && log.contains("PLAY RECAP")).then_some(()))
    })
    .await?;
    let counters = cells(browser, &hello).await?;
    ensure!(
        counters["tasks_ok"] != "0" && counters["tasks_failed"] == "0",
        "counters of {hello}: {counters}"
    );

    // A long run, cancelled from its row while it runs.
    let slow = submit(browser, "slow.yml", Some(r#"{"seconds": 60}"#)).await?;
    wait_for_state(browser, &slow, "running").await?;
    poll("the live log of the running task", async || {
        let log = text_of(browser, "detail-log").await?;
        Ok(log.contains("TASK [First third]").then_some(()))
    })
    .await?;
    // A page on another origin tries what any web page could: a no-cors
    // POST without a body to the cancel URL. The browser sends it; the
    // worker must refuse it.
    let cancel_url = format!("{url}api/tasks/{slow}/cancel");
    let sent = from_elsewhere(
        browser,
        "const [url, done] = arguments; \
         fetch(url, {method: 'POST', mode: 'no-cors'}) \
           .then(() => done('answered'), (e) => done(`failed: ${e}`));",
        vec![json!(cancel_url)],
    )
    .await?;
    ensure!(sent == json!("answered"), "the cross-site fetch: {sent}");

    let cancel = Locator::Css("button[data-action='cancel']");
    let button = row(browser, &slow).await?.find(cancel).await?;
    button.click().await.context("arm the cancel button")?;
    ensure!(
        button.attr("data-confirm").await?.as_deref() == Some("armed"),
        "the first click did not ask for confirmation"
    );
    button.click().await.context("confirm the cancel")?;
    wait_for_state(browser, &slow, "cancelled").await?;
    // Ended by the dashboard's own cancel, not by the other page's.
    let ended = browser
        .execute_async(
            "const [id, done] = arguments; \
             fetch(`api/tasks/${encodeURIComponent(id)}`).then((r) => r.json()) \
               .then((task) => done(task.error_message), (e) => done(`failed: ${e}`));",
            vec![json!(slow)],
        )
        .await?;
    ensure!(
        ended == json!("Cancelled: cancelled from the dashboard"),
        "{slow} ended with {ended}"
    );
    let hidden = script(
        browser,
        "return document.querySelector('#detail-cancel').hidden;",
        vec![],
    )
    .await;
    ensure!(hidden == json!(true), "the cancel button outlived the run");

    let marker = script(browser, "return window.dashboardTestMarker;", vec![]).await;
    ensure!(marker == json!("no reload"), "the page reloaded");

    // Screenshots with the successful run's detail open.
    row(browser, &hello).await?.click().await?;
    poll("the hello detail again", async || {
        Ok(text_of(browser, "detail-output")
            .await?
            .contains("Hello from localhost")
            .then_some(()))
    })
    .await?;
    save_screenshot(browser, "dashboard-screenshot.png").await?;
    browser.set_window_size(390, 1200).await?;
    let widths = script(
        browser,
        "const root = document.documentElement; return [root.clientWidth, root.scrollWidth];",
        vec![],
    )
    .await;
    ensure!(
        widths[0] == widths[1],
        "at phone width the page scrolls sideways (client, scroll width): {widths}"
    );
    save_screenshot(browser, "dashboard-screenshot-phone.png").await?;
    Ok(())
}

/// Runs the async `code` in a new tab showing a page of another origin (a
/// loopback server of the test's own), closes the tab and returns to the
/// dashboard; what `code` passed to its callback.
async fn from_elsewhere(browser: &Client, code: &str, args: Vec<Value>) -> Result<Value> {
    let elsewhere = serve_elsewhere();
    let dashboard = browser.window().await?;
    let tab = browser.new_window(true).await?;
    browser.switch_to_window(tab.handle).await?;
    browser
        .goto(&elsewhere)
        .await
        .context("open the other page")?;
    let outcome = browser.execute_async(code, args).await;
    browser.close_window().await?;
    browser.switch_to_window(dashboard).await?;
    Ok(outcome?)
}

/// A plain page on a free loopback port (another origin than the
/// dashboard's); its URL. The thread serves until the test process ends.
fn serve_elsewhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        const PAGE: &str = "<!doctype html><title>elsewhere</title><p>another site";
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
    });
    url
}

/// Fills the form and submits it; the task id the page reports.
async fn submit(browser: &Client, playbook: &str, extra_vars: Option<&str>) -> Result<String> {
    let form = browser.find(Locator::Id("submit-form")).await?;
    form.find(Locator::Id("playbook"))
        .await?
        .select_by_value(playbook)
        .await
        .with_context(|| format!("pick {playbook}"))?;
    form.find(Locator::Id("inventory"))
        .await?
        .select_by_value("inventory.yml")
        .await
        .context("pick inventory.yml")?;
    let vars = form.find(Locator::Id("extra-vars")).await?;
    vars.clear().await?;
    if let Some(text) = extra_vars {
        vars.send_keys(text).await?;
    }
    // Whatever an earlier submit left there must not count.
    browser
        .execute(
            "delete document.getElementById('submit-message').dataset.taskId;",
            vec![],
        )
        .await?;
    form.find(Locator::Id("submit-button"))
        .await?
        .click()
        .await?;
    poll(
        &format!("the task id of the {playbook} submit"),
        async || {
            let message = browser.find(Locator::Id("submit-message")).await?;
            if message.attr("data-kind").await?.as_deref() == Some("error") {
                bail!("the page refused the submit: {}", message.text().await?);
            }
            Ok(message.attr("data-task-id").await?)
        },
    )
    .await
}

/// Waits until the row of `task_id` shows `state`; fails early on another
/// final state.
async fn wait_for_state(browser: &Client, task_id: &str, state: &str) -> Result<()> {
    poll(&format!("{task_id} to be {state}"), async || {
        let shown = script(
            browser,
            "const row = document.querySelector(`tr[data-task-id=\"${CSS.escape(arguments[0])}\"]`); \
             return row ? row.dataset.state : null;",
            vec![json!(task_id)],
        )
        .await;
        match shown.as_str() {
            Some(now) if now == state => Ok(Some(())),
            Some(end @ ("success" | "failed" | "cancelled" | "timeout")) => {
                let detail = text_of(browser, "detail").await.unwrap_or_default();
                bail!("{task_id} ended {end}, not {state}; detail panel:\n{detail}")
            }
            _ => Ok(None),
        }
    })
    .await
}

async fn row(browser: &Client, task_id: &str) -> Result<fantoccini::elements::Element> {
    let selector = format!("tr[data-task-id='{task_id}']");
    Ok(browser.find(Locator::Css(&selector)).await?)
}

/// The row's cells by column name, as shown.
async fn cells(browser: &Client, task_id: &str) -> Result<Value> {
    Ok(script(
        browser,
        "const row = document.querySelector(`tr[data-task-id=\"${CSS.escape(arguments[0])}\"]`); \
         return Object.fromEntries([...row.querySelectorAll('td[data-col]')] \
           .map((td) => [td.dataset.col, td.textContent]));",
        vec![json!(task_id)],
    )
    .await)
}

async fn text_of(browser: &Client, id: &str) -> Result<String> {
    Ok(browser.find(Locator::Id(id)).await?.text().await?)
}

/// Runs `code` in the page; `null` when it fails (the page may be mid-update).
async fn script(browser: &Client, code: &str, args: Vec<Value>) -> Value {
    browser.execute(code, args).await.unwrap_or(Value::Null)
}

/// Polls `probe` until it yields a value, fails, or [`DEADLINE`] passes.
async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn save_screenshot(browser: &Client, name: &str) -> Result<PathBuf> {
    let png = browser.screenshot().await?;
    let path = target_dir().join(name);
    std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Cargo's target directory (wherever `CARGO_TARGET_DIR` put it): the
/// binary under test lives in its `debug/` or `release/`.
fn target_dir() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_ansible-worker"));
    binary
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .to_path_buf()
}

/// The appliance on the example config (dashboard on), once it is ready; the
/// dashboard's URL.
fn start_appliance() -> (Appliance, String) {
    let appliance = Appliance::start(&[], example_config);
    let url = appliance.http.url("/");
    for path in ["/healthz", "/readyz"] {
        assert!(
            wait_until(DEADLINE, || appliance
                .http
                .try_get(path, None)
                .is_some_and(|reply| reply.status == 200)),
            "{path} never answered 200:\n{}",
            appliance.worker.log()
        );
    }
    (appliance, url)
}

/// `chromedriver` on a free port, in a process group of its own so that the
/// Chromium it starts goes with it.
struct ChromeDriver {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl ChromeDriver {
    fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let log = File::create(dir.path().join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER} (run scripts/setup): {e}"));
        let driver = ChromeDriver { port, dir, child };
        assert!(
            wait_until(Duration::from_secs(20), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "chromedriver did not listen on port {port}:\n{}",
            driver.log()
        );
        driver
    }

    /// A new headless Chromium session with an empty profile.
    async fn connect(&self) -> Client {
        let profile = self.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        // Plain HTTP to the loopback chromedriver: no TLS stack in the test.
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("no Chromium session: {e}\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group: chromedriver and every Chromium process it started.
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
