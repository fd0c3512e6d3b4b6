//! Tests of `playbook` and `inventory` resolution and containment.

use super::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn playbook_is_resolved_inside_the_directory() {
    let f = fixture();
    // A symlink inside resolves to its canonical target.
    assert_eq!(
        accept(&f, json!({"playbook": "alias.yml"})).playbook,
        f.dir().join("site.yml")
    );
    assert_eq!(
        accept(&f, json!({"playbook": "sub/../site.yml"})).playbook,
        f.dir().join("site.yml")
    );
    assert_eq!(
        accept(&f, json!({"playbook": "./sub/deploy.yml"})).playbook,
        f.dir().join("sub/deploy.yml")
    );
}

#[test]
fn missing_playbook_names_the_requested_path() {
    let f = fixture();
    assert_eq!(
        refuse(&f, json!({"playbook": "nope.yml"})),
        "Playbook not found: nope.yml"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "sub/nope.yml"})),
        "Playbook not found: sub/nope.yml"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "site.yml/x"})),
        "Playbook not found: site.yml/x"
    );
}

#[test]
fn playbook_outside_the_directory_is_refused() {
    let f = fixture();
    // `../x.yml` exists, but outside.
    assert_eq!(
        refuse(&f, json!({"playbook": "../x.yml"})),
        "Playbook outside the playbook directory: ../x.yml"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "sub/../../x.yml"})),
        "Playbook outside the playbook directory: sub/../../x.yml"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "escape.yml"})),
        "Playbook outside the playbook directory: escape.yml"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "linkdir/evil.yml"})),
        "Playbook outside the playbook directory: linkdir/evil.yml"
    );
    let absolute = f.dir().join("site.yml").display().to_string();
    let reason = refuse(&f, json!({"playbook": absolute}));
    assert!(
        reason.starts_with("Invalid field 'playbook': must be a path relative"),
        "{reason}"
    );
}

#[test]
fn playbook_must_be_a_non_empty_string_naming_a_file() {
    let f = fixture();
    assert_eq!(
        refuse(&f, json!({"playbook": "sub"})),
        "Playbook is not a file: sub"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "."})),
        "Playbook is not a file: ."
    );
    assert_eq!(
        refuse(&f, json!({"playbook": null})),
        "Missing required field 'playbook'"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": 3})),
        "Invalid field 'playbook': must be a string"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": ""})),
        "Invalid field 'playbook': must not be empty"
    );
    assert_eq!(
        refuse(&f, json!({"playbook": "site.yml\n"})),
        "Invalid field 'playbook': must not contain control characters"
    );
}

#[test]
fn inline_inventory_forms() {
    let f = fixture();
    let inline = |value: &str| accept(&f, json!({"inventory": value})).inventory;
    assert_eq!(inline("web1,web2,"), Inventory::Inline("web1,web2,".into()));
    assert_eq!(inline("localhost,"), Inventory::Inline("localhost,".into()));
    // Normalised to a trailing comma so Ansible reads a host list.
    assert_eq!(inline("web1"), Inventory::Inline("web1,".into()));
    assert_eq!(inline("web1,web2"), Inventory::Inline("web1,web2,".into()));
    assert_eq!(inline("~"), Inventory::Inline("~,".into()));
    assert_eq!(inline("$HOME"), Inventory::Inline("$HOME,".into()));
    assert_eq!(
        inline("10.0.0.1:2222,"),
        Inventory::Inline("10.0.0.1:2222,".into())
    );
}

#[test]
fn existing_inventory_paths_are_files_inside_the_directory() {
    let f = fixture();
    let file = |value: &str| accept(&f, json!({"inventory": value})).inventory;
    // No `/` but an existing file: a file, as Ansible would read it.
    assert_eq!(
        file("hosts.ini"),
        Inventory::File(f.dir().join("hosts.ini"))
    );
    assert_eq!(
        file("./hosts.ini"),
        Inventory::File(f.dir().join("hosts.ini"))
    );
    assert_eq!(
        file("inventories/prod/hosts"),
        Inventory::File(f.dir().join("inventories/prod/hosts"))
    );
    assert_eq!(
        file("inventories/prod/"),
        Inventory::File(f.dir().join("inventories/prod"))
    );
    // Ends with `,` but exists: Ansible reads the file, so do we.
    assert_eq!(file("odd,"), Inventory::File(f.dir().join("odd,")));
    // `odd` does not exist, but `odd,` (what Ansible would be given) does.
    assert_eq!(file("odd"), Inventory::File(f.dir().join("odd,")));
}

#[test]
fn inventory_outside_or_missing_is_refused() {
    let f = fixture();
    let reason = |value: &str| refuse(&f, json!({"inventory": value}));
    assert_eq!(
        reason("inventories/nope.ini"),
        "Inventory not found: inventories/nope.ini"
    );
    assert_eq!(reason("sub/nope/"), "Inventory not found: sub/nope/");
    assert_eq!(
        reason("../outside/hosts.ini"),
        "Inventory outside the playbook directory: ../outside/hosts.ini"
    );
    assert_eq!(
        reason("../nope"),
        "Inventory outside the playbook directory: ../nope"
    );
    assert_eq!(
        reason("../x.yml,"),
        "Inventory outside the playbook directory: ../x.yml,"
    );
    assert_eq!(reason(".."), "Inventory outside the playbook directory: ..");
    assert_eq!(
        reason("escape.ini"),
        "Inventory outside the playbook directory: escape.ini"
    );
    assert_eq!(
        reason("linkdir/hosts.ini"),
        "Inventory outside the playbook directory: linkdir/hosts.ini"
    );
    assert!(reason("/etc/hosts").starts_with("Invalid field 'inventory': must be relative"));
    assert!(reason("-i").contains("must not start with '-'"));
    assert!(reason(",").contains("at least one host"));
    assert!(reason(" , ,").contains("at least one host"));
    assert_eq!(reason(""), "Invalid field 'inventory': must not be empty");
    assert_eq!(
        reason("a\u{7f},"),
        "Invalid field 'inventory': must not contain control characters"
    );
    assert_eq!(
        refuse(&f, json!({"inventory": null})),
        "Missing required field 'inventory'"
    );
    assert_eq!(
        refuse(&f, json!({"inventory": ["a"]})),
        "Invalid field 'inventory': must be a string"
    );
}

#[test]
fn resolution_agrees_with_canonicalize_on_every_kind_of_path() {
    let f = fixture();
    let dir = f.dir();
    // A directory symlink inside the directory, on the way to a file.
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("sublink")).unwrap();
    let requested = [
        "site.yml",
        "sub/deploy.yml",
        "sub",
        "inventories/prod/hosts",
        "alias.yml",
        "escape.yml",
        "linkdir/evil.yml",
        "sublink/deploy.yml",
        "sub//deploy.yml",
        "./site.yml",
        "sub/../site.yml",
        "site.yml/",
        "sub/",
        "site.yml/x",
        "nope.yml",
        "sub/nope.yml",
        "odd,",
        "",
    ];
    for requested in requested {
        let expected = dir
            .join(requested)
            .canonicalize()
            .and_then(|path| path.metadata().map(|meta| (path, meta)));
        let got = super::super::paths::resolve_in(dir, requested);
        match (got, expected) {
            (Ok((path, meta)), Ok((want, want_meta))) => {
                assert_eq!(path, want, "{requested}");
                assert_eq!(meta.ino(), want_meta.ino(), "{requested}");
                assert_eq!(meta.file_type(), want_meta.file_type(), "{requested}");
            }
            (Err(e), Err(want)) => assert_eq!(e.kind(), want.kind(), "{requested}"),
            (got, expected) => panic!("{requested}: {got:?} against {expected:?}"),
        }
    }
}
