//! Path containment for `playbook` and `inventory`: resolves the requested
//! path against the (canonical) playbook directory and refuses anything that
//! ends up outside it, lexically (`..`) or through a symlink, or that is
//! hidden (a component starting with `.`, asked for or reached through a
//! symlink: `.vault_pass` and friends are never served). An inventory may not
//! be, or contain, an executable file unless the policy enables Ansible's
//! `script` plugin: Ansible would run it. It also decides, the way Ansible
//! does, whether an `inventory` value is a file or an inline host list.
//!
//! It reads the file system (canonicalisation, file type and mode, directory
//! listings) but never opens or parses a playbook or inventory, so no reason
//! can quote a file's content.

use std::collections::HashSet;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::{IntakePolicy, SHOWN_PATH_CHARS, invalid, plain_text, shown};
use crate::model::Inventory;

/// Entries an inventory directory may hold for the executable check; a
/// larger tree is refused rather than walked on the intake path.
const MAX_INVENTORY_ENTRIES: usize = 1000;
/// Names Ansible always skips inside an inventory directory (besides hidden
/// ones): they hold variables, not inventory sources.
const SKIPPED_IN_INVENTORY_DIRS: [&str; 3] = ["host_vars", "group_vars", "vars_plugins"];

/// The canonical playbook file `requested` names inside the policy's
/// playbook directory; the reason it may not be run otherwise.
pub fn playbook_path(requested: &str, policy: &IntakePolicy) -> Result<PathBuf, String> {
    plain_text(requested, "playbook")?;
    let dir = &policy.playbook_directory;
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
    // Before looking at the disk, so the answer says nothing about what
    // hidden files exist.
    if has_hidden_component(path) {
        return Err(format!(
            "Playbook is a hidden file (a path component starts with '.'): {shown_path}"
        ));
    }
    let (resolved, meta) = match resolve_in(dir, requested) {
        Ok(found) => found,
        Err(e) if is_missing(&e) => return Err(format!("Playbook not found: {shown_path}")),
        Err(e) => return Err(format!("Playbook cannot be resolved: {shown_path}: {e}")),
    };
    let Ok(inside) = resolved.strip_prefix(dir) else {
        return Err(outside());
    };
    if has_hidden_component(inside) {
        return Err(format!(
            "Playbook resolves to a hidden file (a path component starts with '.'): \
             {shown_path}"
        ));
    }
    if !meta.is_file() {
        return Err(format!("Playbook is not a file: {shown_path}"));
    }
    Ok(resolved)
}

/// Follows Ansible's own reading of `-i <value>` (run with the playbook
/// directory as working directory): an existing path is an inventory file or
/// directory whatever its spelling, otherwise a value with a comma is a host
/// list. Existing paths must resolve inside the directory, so neither a
/// `../x,` host list nor a symlink can make Ansible read an outside inventory;
/// hidden and (unless the policy allows inventory scripts) executable ones
/// are refused too.
pub fn inventory_path(requested: &str, policy: &IntakePolicy) -> Result<Inventory, String> {
    plain_text(requested, "inventory")?;
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
    if let Some(file) = existing_inventory(requested, policy, &shown_value)? {
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
    Ok(match existing_inventory(&hosts, policy, &shown_value)? {
        // Ansible would read that file rather than the host list.
        Some(file) => Inventory::File(file),
        None => Inventory::Inline(hosts),
    })
}

/// The canonical path `requested` names relative to the playbook directory,
/// if it exists; an error if it exists (or lexically is) outside the
/// directory, is hidden, is not a regular file or directory, or is (or holds)
/// an executable the policy does not let Ansible run.
fn existing_inventory(
    requested: &str,
    policy: &IntakePolicy,
    shown_value: &str,
) -> Result<Option<PathBuf>, String> {
    let dir = &policy.playbook_directory;
    let outside = || format!("Inventory outside the playbook directory: {shown_value}");
    let path = Path::new(requested);
    if escapes_lexically(path) {
        return Err(outside());
    }
    // Even a host list like `.x,` is refused: checking before the disk is
    // read keeps the answer from telling which hidden files exist.
    if has_hidden_component(path) {
        return Err(format!(
            "Inventory is a hidden file (a path component starts with '.'): {shown_value}"
        ));
    }
    let (resolved, meta) = match resolve_in(dir, requested) {
        Ok(found) => found,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(format!("Inventory cannot be resolved: {shown_value}: {e}")),
    };
    let Ok(inside) = resolved.strip_prefix(dir) else {
        return Err(outside());
    };
    if has_hidden_component(inside) {
        return Err(format!(
            "Inventory resolves to a hidden file (a path component starts with '.'): \
             {shown_value}"
        ));
    }
    let script_rule = "Ansible would run it as an inventory script; add \"script\" to \
                       worker.inventory_plugins to allow inventory scripts";
    if meta.is_file() {
        if !policy.inventory_scripts && is_executable_file(&meta) {
            return Err(format!(
                "Inventory is an executable file: {shown_value}; {script_rule}"
            ));
        }
    } else if meta.is_dir() {
        if !policy.inventory_scripts {
            match first_executable(&resolved) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    let found = shown(&found.display().to_string(), SHOWN_PATH_CHARS);
                    return Err(format!(
                        "Inventory directory {shown_value} holds an executable file: {found}; \
                         {script_rule}"
                    ));
                }
                Err(why) => return Err(format!("Inventory directory {shown_value} {why}")),
            }
        }
    } else {
        return Err(format!(
            "Inventory is not a file or directory: {shown_value}"
        ));
    }
    Ok(Some(resolved))
}

/// True if `path` names a hidden file or directory anywhere along it.
fn has_hidden_component(path: &Path) -> bool {
    path.components().any(|component| match component {
        Component::Normal(name) => name.as_encoded_bytes().starts_with(b"."),
        _ => false,
    })
}

/// The canonical path `requested` (relative) names inside the canonical
/// directory `dir`, with its metadata (symlinks followed): what
/// `dir.join(requested).canonicalize()` and a `stat` of the result give.
///
/// A plain path (named components only, none of them a symlink) is checked
/// with one `lstat` per component of `requested`: `canonicalize` reads every
/// component of the whole path, `dir`'s too, on every request. Anything
/// else (`.`, `..`, a trailing `/`, a symlink on the way) is left to
/// `canonicalize`.
pub(super) fn resolve_in(dir: &Path, requested: &str) -> io::Result<(PathBuf, Metadata)> {
    let relative = Path::new(requested);
    let plain = !requested.ends_with('/')
        && relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if plain {
        let mut path = dir.to_path_buf();
        let mut meta = None;
        for component in relative.components() {
            path.push(component);
            let found = std::fs::symlink_metadata(&path)?;
            if found.file_type().is_symlink() {
                meta = None;
                break;
            }
            meta = Some(found);
        }
        if let Some(meta) = meta {
            return Ok((path, meta));
        }
    }
    let resolved = dir.join(relative).canonicalize()?;
    let meta = resolved.metadata()?;
    Ok((resolved, meta))
}

/// True for a file (symlinks followed) that anyone may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| is_executable_file(&meta))
}

/// True if `meta` is of a file that anyone may execute.
fn is_executable_file(meta: &Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// The first executable file (relative to `root`) among the entries Ansible
/// reads from the inventory directory `root`, recursively as Ansible does:
/// hidden entries and variable directories are skipped, symlinks followed.
/// Would any of them be an inventory script, Ansible would run it; without
/// the script plugin, it would read it as an INI file and quote its lines in
/// warnings.
fn first_executable(root: &Path) -> Result<Option<PathBuf>, String> {
    let mut pending = vec![root.to_path_buf()];
    let mut visited = HashSet::new();
    let mut entries = 0usize;
    while let Some(dir) = pending.pop() {
        // Symlinked directories can form loops.
        let Ok(canonical) = dir.canonicalize() else {
            continue;
        };
        if !visited.insert(canonical) {
            continue;
        }
        let listing = std::fs::read_dir(&dir).map_err(|e| format!("cannot be read: {e}"))?;
        for entry in listing {
            let entry = entry.map_err(|e| format!("cannot be read: {e}"))?;
            entries += 1;
            if entries > MAX_INVENTORY_ENTRIES {
                return Err(format!(
                    "holds more than {MAX_INVENTORY_ENTRIES} entries, too many to check"
                ));
            }
            let name = entry.file_name();
            let skipped = name.as_encoded_bytes().starts_with(b".")
                || SKIPPED_IN_INVENTORY_DIRS.iter().any(|s| name == *s);
            if skipped {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_executable(&path) {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                return Ok(Some(relative));
            }
        }
    }
    Ok(None)
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
