//! The container files in `docker/`: the Dockerfile passes hadolint, the
//! compose file is valid, the container's config validates, and the image build
//! copies files that exist, including everything the crate reads at compile
//! time. No Docker engine is needed: hadolint and `docker-compose config` only
//! read the files. Both tools come from `scripts/setup`; a missing tool fails
//! the test rather than skipping it.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

const SETUP_HINT: &str = "run ./scripts/setup, which installs it";

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = project_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `command`, panicking with a pointer to `scripts/setup` when the program
/// cannot be started.
fn output(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {SETUP_HINT}"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One instruction of a Dockerfile, continuation lines joined.
struct Instruction {
    /// Index of the build stage (`FROM`) it belongs to.
    stage: usize,
    /// Upper-cased keyword (`COPY`, `RUN`, ...).
    keyword: String,
    /// Everything after the keyword.
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut result = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        // Comments and blank lines may also sit inside a continued instruction.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" && !result.is_empty() {
            stage += 1;
        }
        result.push(Instruction {
            stage,
            keyword,
            args: args.trim().to_owned(),
        });
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    result
}

/// A `COPY`/`ADD`: its `--from` (if any), its sources and its destination.
struct Copy {
    stage: usize,
    from: Option<String>,
    sources: Vec<String>,
    destination: String,
}

fn copies(dockerfile: &str) -> Vec<Copy> {
    instructions(dockerfile)
        .into_iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .map(|i| {
            let mut from = None;
            let mut rest = i.args.as_str();
            while let Some(flagged) = rest.strip_prefix("--") {
                let (flag, tail) = flagged
                    .split_once(char::is_whitespace)
                    .unwrap_or((flagged, ""));
                if let Some(stage) = flag.strip_prefix("from=") {
                    from = Some(stage.to_owned());
                }
                rest = tail.trim_start();
            }
            let mut paths: Vec<String> = if rest.starts_with('[') {
                serde_json::from_str(rest)
                    .unwrap_or_else(|e| panic!("{} {}: bad JSON form: {e}", i.keyword, i.args))
            } else {
                rest.split_whitespace().map(str::to_owned).collect()
            };
            assert!(
                paths.len() >= 2,
                "{} {}: no source or destination",
                i.keyword,
                i.args
            );
            let destination = paths.pop().unwrap();
            Copy {
                stage: i.stage,
                from,
                sources: paths,
                destination,
            }
        })
        .collect()
}

/// The copies from the build context (not from another stage).
fn context_copies(dockerfile: &str) -> Vec<Copy> {
    copies(dockerfile)
        .into_iter()
        .filter(|c| c.from.is_none())
        .collect()
}

/// `path` relative to the repository root, lexically normalised.
fn repo_relative(path: &Path) -> PathBuf {
    let root = project_dir();
    let relative = path
        .strip_prefix(&root)
        .unwrap_or_else(|_| panic!("{} is outside {}", path.display(), root.display()));
    let mut normal = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::ParentDir => assert!(normal.pop(), "{} leaves the repo", path.display()),
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = project_dir().join(".venv/bin/hadolint");
    assert!(
        hadolint.is_file(),
        "{} is missing; {SETUP_HINT}",
        hadolint.display()
    );
    for dockerfile in ["docker/Dockerfile", "docker/mosquitto.Dockerfile"] {
        let result = output(
            Command::new(&hadolint)
                .args(["--no-color", dockerfile])
                .current_dir(project_dir()),
        );
        assert!(
            result.status.success(),
            "hadolint found problems in {dockerfile}:\n{}",
            describe(&result)
        );
    }
}

#[test]
fn compose_files_are_valid() {
    for file in ["docker/compose.yml", "docker/fleet.yml"] {
        let result = output(
            Command::new("docker-compose")
                .args(["-f", file, "config", "-q"])
                .env("MQTT_WORKER_PASSWORD", "checked")
                .env("MQTT_CONTROLLER_PASSWORD", "checked")
                .current_dir(project_dir()),
        );
        assert!(
            result.status.success(),
            "docker-compose rejects {file}:\n{}",
            describe(&result)
        );
    }
}

#[test]
fn container_configs_validate() {
    // The appliance's, and the fleet workers' with the environment fleet.yml
    // gives them.
    for (file, env) in [
        ("docker/config.toml", &[][..]),
        (
            "docker/fleet/worker.toml",
            &[("WORKER_ID", "worker-1"), ("MQTT_PASSWORD", "checked")][..],
        ),
    ] {
        let text = read(file);
        let playbooks = "/srv/ansible-worker/playbooks";
        let state = "/var/lib/ansible-worker";
        assert!(text.contains(playbooks) && text.contains(state), "{text}");

        // The image holds examples/playbooks at /srv/ansible-worker/playbooks;
        // the state directory is the image's, created empty.
        let dir = tempfile::TempDir::new().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let sample_playbooks = project_dir().join("examples/playbooks");
        let copy = dir.path().join("config.toml");
        let rewritten = text
            .replace(playbooks, sample_playbooks.to_str().unwrap())
            .replace(state, state_dir.to_str().unwrap());
        std::fs::write(&copy, rewritten).unwrap();

        let result = output(
            Command::new(env!("CARGO_BIN_EXE_ansible-worker"))
                .arg("-c")
                .arg(&copy)
                .arg("--validate")
                .envs(env.iter().copied()),
        );
        assert!(
            result.status.success(),
            "{file} does not validate:\n{}",
            describe(&result)
        );
    }
}

#[test]
fn dependency_layer_stands_in_for_every_cargo_target() {
    // Cargo reads every target Cargo.toml declares before it builds anything,
    // so the dependency layer must create each one's file.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let dockerfile = read("docker/Dockerfile");
    let stand_in = instructions(&dockerfile)
        .into_iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("Stand-in"))
        .expect("no stand-in RUN in docker/Dockerfile")
        .args;
    let copied: Vec<PathBuf> = context_copies(&dockerfile)
        .into_iter()
        .flat_map(|c| c.sources)
        .map(|s| PathBuf::from(s.trim_start_matches("./").trim_end_matches('/')))
        .collect();
    for (kind, default_dir) in [
        ("bench", "benches"),
        ("example", "examples"),
        ("bin", "src/bin"),
    ] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target["name"].as_str().unwrap();
            let path = target
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{default_dir}/{name}.rs"));
            assert!(
                stand_in.contains(&format!("> {path}")),
                "the Dockerfile's dependency layer has no stand-in for {kind} {name} ({path})"
            );
            assert!(
                copied.iter().any(|c| Path::new(&path).starts_with(c)),
                "the Dockerfile's build stage does not copy {kind} {name} ({path})"
            );
        }
    }
}

#[test]
fn dockerfile_copy_sources_exist_and_are_in_the_context() {
    let dockerfile = read("docker/Dockerfile");
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('*'))
        .collect();
    let copies = context_copies(&dockerfile);
    assert!(!copies.is_empty(), "no COPY in docker/Dockerfile");
    for source in copies.iter().flat_map(|c| &c.sources) {
        assert!(
            !source.contains(['*', '?', '[']),
            "{source}: globs are not checked by this test"
        );
        let relative = source.trim_start_matches("./").trim_end_matches('/');
        assert!(
            project_dir().join(relative).exists(),
            "COPY source {source} does not exist in the repository"
        );
        for pattern in &ignored {
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            assert!(
                !Path::new(relative).starts_with(pattern),
                "COPY source {source} is excluded by .dockerignore ({pattern})"
            );
        }
    }
}

#[test]
fn build_stage_copies_every_file_the_crate_includes() {
    let dockerfile = read("docker/Dockerfile");
    let build_stage = instructions(&dockerfile)
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .map(|i| i.stage)
        .expect("no `RUN cargo build` in docker/Dockerfile");
    let copied: Vec<PathBuf> = context_copies(&dockerfile)
        .into_iter()
        .filter(|c| c.stage == build_stage)
        .flat_map(|c| c.sources)
        .map(|s| PathBuf::from(s.trim_start_matches("./")))
        .collect();
    for manifest in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            copied.iter().any(|c| Path::new(manifest).starts_with(c)),
            "the build stage does not copy {manifest}"
        );
    }

    let mut sources = Vec::new();
    rust_files(&project_dir().join("src"), &mut sources);
    let mut checked = 0;
    for file in sources {
        let code = std::fs::read_to_string(&file).unwrap();
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(marker) {
                let literal = &code[at + marker.len()..];
                let literal = &literal[..literal.find('"').unwrap()];
                let included = repo_relative(&file.parent().unwrap().join(literal));
                assert!(
                    copied.iter().any(|c| included.starts_with(c)),
                    "{} includes {}, which the build stage of docker/Dockerfile does not COPY",
                    repo_relative(&file).display(),
                    included.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "found no include_str! in src/ (the parser is broken?)"
    );
}

#[test]
fn container_paths_agree() {
    let dockerfile = read("docker/Dockerfile");
    let compose = read("docker/compose.yml");
    let config: toml::Table = read("docker/config.toml").parse().unwrap();
    let get = |section: &str, key: &str| -> String {
        config[section][key]
            .as_str()
            .unwrap_or_else(|| panic!("{section}.{key} is not a string"))
            .to_owned()
    };
    let playbooks = get("worker", "playbook_directory");
    let state = get("worker", "state_dir");

    let context = context_copies(&dockerfile);
    let destination_of = |source: &str| {
        context
            .iter()
            .find(|c| c.sources.iter().any(|s| s == source))
            .map(|c| c.destination.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| panic!("docker/Dockerfile does not COPY {source}"))
    };
    assert_eq!(destination_of("examples/playbooks"), playbooks);
    let config_path = destination_of("docker/config.toml");
    let cmd = instructions(&dockerfile)
        .into_iter()
        .rfind(|i| i.keyword == "CMD")
        .expect("no CMD");
    assert!(cmd.args.contains(&config_path), "CMD {}", cmd.args);
    assert!(
        dockerfile.contains(&format!(
            "install -d -o ansible-worker -g ansible-worker -m 0750 {state}"
        )),
        "docker/Dockerfile does not create {state} for the service user"
    );
    assert!(
        compose.contains(&format!(":{playbooks}:ro")),
        "compose.yml does not mount {playbooks}"
    );
    assert!(
        compose.contains(&format!("state:{state}")),
        "compose.yml does not keep {state} in a volume"
    );

    // The listeners bind all interfaces (to be published) on the exposed ports.
    let expose = instructions(&dockerfile)
        .into_iter()
        .find(|i| i.keyword == "EXPOSE")
        .expect("no EXPOSE")
        .args;
    for section in ["broker", "http"] {
        assert_eq!(
            config[section]["enabled"].as_bool(),
            Some(true),
            "{section}.enabled"
        );
        let listen = get(section, "listen");
        let (ip, port) = listen.rsplit_once(':').unwrap();
        assert_eq!(ip, "0.0.0.0", "{section}.listen must bind all interfaces");
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "EXPOSE {expose} lacks {port}"
        );
        assert!(
            compose.contains(&format!(":-127.0.0.1:{port}}}:{port}\"")),
            "compose.yml does not publish {port} on 127.0.0.1"
        );
    }
}
