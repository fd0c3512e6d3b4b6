//! Tests of the file rules that keep secrets and scripts out of runs: hidden
//! paths (asked for or reached through a symlink) and executable inventories,
//! which only a policy enabling Ansible's `script` plugin accepts.

use super::*;
use std::os::unix::fs::PermissionsExt;

const SECRET: &str = "s3cr3t-vault-line";

/// The common fixture plus a vault password file, a hidden directory,
/// symlinks to both, an inventory script and inventory directories with and
/// without one.
fn with_secrets_and_scripts() -> Fixture {
    let f = fixture();
    let pb = f.dir().to_path_buf();
    let executable = |path: &Path, text: &str| {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    for dir in [
        "files",
        ".hidden",
        "inv",
        "inv_clean/group_vars",
        "inv_clean/sub",
    ] {
        fs::create_dir_all(pb.join(dir)).unwrap();
    }
    fs::write(pb.join(".vault_pass"), format!("{SECRET}\nsecond\n")).unwrap();
    fs::write(pb.join(".hidden/site.yml"), "- hosts: all\n").unwrap();
    symlink(pb.join(".vault_pass"), pb.join("vault.yml")).unwrap();
    symlink(pb.join(".vault_pass"), pb.join("vault.ini")).unwrap();
    symlink(pb.join(".hidden"), pb.join("shown")).unwrap();
    executable(&pb.join("files/deploy.sh"), "#!/bin/sh\necho '{}'\n");
    fs::write(pb.join("inv/hosts.ini"), "localhost\n").unwrap();
    executable(&pb.join("inv/gen.sh"), "#!/bin/sh\necho '{}'\n");
    fs::write(pb.join("inv_clean/hosts.ini"), "localhost\n").unwrap();
    fs::write(pb.join("inv_clean/sub/more.yml"), "all: {}\n").unwrap();
    // Ansible skips hidden entries and variable directories of an inventory
    // directory, so executables there are never run.
    executable(&pb.join("inv_clean/.helper.sh"), "#!/bin/sh\n");
    executable(&pb.join("inv_clean/group_vars/all.sh"), "#!/bin/sh\n");
    f
}

#[test]
fn hidden_playbooks_are_refused_without_their_content() {
    let f = with_secrets_and_scripts();
    let cases = [
        (".vault_pass", "Playbook is a hidden file"),
        ("./.vault_pass", "Playbook is a hidden file"),
        ("sub/../.vault_pass", "Playbook is a hidden file"),
        (".hidden/site.yml", "Playbook is a hidden file"),
        // Refused before the disk is read: no hint whether it exists.
        (".nope.yml", "Playbook is a hidden file"),
        ("vault.yml", "Playbook resolves to a hidden file"),
        ("shown/site.yml", "Playbook resolves to a hidden file"),
    ];
    for (requested, start) in cases {
        let reason = refuse(&f, json!({"playbook": requested}));
        assert_eq!(
            reason,
            format!("{start} (a path component starts with '.'): {requested}")
        );
        assert!(!reason.contains(SECRET), "{reason}");
    }
}

#[test]
fn hidden_inventories_are_refused_without_their_content() {
    let f = with_secrets_and_scripts();
    let cases = [
        (".vault_pass", "Inventory is a hidden file"),
        (".vault_pass,", "Inventory is a hidden file"),
        ("./.vault_pass", "Inventory is a hidden file"),
        (".hidden", "Inventory is a hidden file"),
        ("vault.ini", "Inventory resolves to a hidden file"),
        ("shown", "Inventory resolves to a hidden file"),
    ];
    for (requested, start) in cases {
        let reason = refuse(&f, json!({"inventory": requested}));
        assert_eq!(
            reason,
            format!("{start} (a path component starts with '.'): {requested}")
        );
        assert!(!reason.contains(SECRET), "{reason}");
    }
    // Dots inside a name or a host list are not hidden components.
    let inline = accept(&f, json!({"inventory": "web1.example.com,db.example.com"}));
    assert_eq!(
        inline.inventory,
        Inventory::Inline("web1.example.com,db.example.com,".into())
    );
}

#[test]
fn executable_inventories_are_refused_with_the_reason() {
    let f = with_secrets_and_scripts();
    assert_eq!(
        refuse(&f, json!({"inventory": "files/deploy.sh"})),
        "Inventory is an executable file: files/deploy.sh; Ansible would run it as an \
         inventory script; add \"script\" to worker.inventory_plugins to allow inventory scripts"
    );
    assert_eq!(
        refuse(&f, json!({"inventory": "inv"})),
        "Inventory directory inv holds an executable file: gen.sh; Ansible would run it as an \
         inventory script; add \"script\" to worker.inventory_plugins to allow inventory scripts"
    );
    // Executables Ansible skips in a directory do not count.
    assert_eq!(
        accept(&f, json!({"inventory": "inv_clean"})).inventory,
        Inventory::File(f.dir().join("inv_clean"))
    );
}

#[test]
fn the_script_plugin_lets_executable_inventories_through() {
    let mut f = with_secrets_and_scripts();
    f.policy.inventory_scripts = true;
    assert_eq!(
        accept(&f, json!({"inventory": "files/deploy.sh"})).inventory,
        Inventory::File(f.dir().join("files/deploy.sh"))
    );
    assert_eq!(
        accept(&f, json!({"inventory": "inv"})).inventory,
        Inventory::File(f.dir().join("inv"))
    );
    // It never lets hidden files through.
    assert!(refuse(&f, json!({"inventory": ".vault_pass"})).starts_with("Inventory is a hidden"));
}

#[test]
fn only_the_script_plugin_enables_inventory_scripts() {
    let f = fixture();
    let text = format!(
        "[worker]\ngroup_name = \"g\"\nplaybook_directory = {:?}\n",
        f.dir().display()
    );
    let mut worker = crate::config::Config::from_toml(&text, f.dir(), &|_| None)
        .unwrap()
        .worker;
    assert!(!IntakePolicy::of(&worker).inventory_scripts);
    for (plugins, scripts) in [
        (&["host_list", "ini", "yaml", "toml", "auto"][..], false),
        (&["ini", "script"][..], true),
        (&["ansible.builtin.script"][..], true),
    ] {
        worker.inventory_plugins = plugins.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            IntakePolicy::of(&worker).inventory_scripts,
            scripts,
            "{plugins:?}"
        );
    }
}
