//! Workspace hygiene that no compiler checks: every crate takes its Rust version and its lints
//! from the workspace, so one line in the root `Cargo.toml` sets them for all.

use std::path::Path;

/// The manifests of the workspace's members, as listed in the root `Cargo.toml`.
fn member_manifests() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the root Cargo.toml lists its members");
    let mut manifests = vec![("entities".to_string(), manifest.clone())];
    for member in members.split(',') {
        let member = member.trim().trim_matches('"');
        if member.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(root.join(member).join("Cargo.toml"))
            .unwrap_or_else(|err| panic!("{member}/Cargo.toml: {err}"));
        manifests.push((member.to_string(), text));
    }
    manifests
}

#[test]
fn every_crate_inherits_the_rust_version_and_the_lints() {
    let manifests = member_manifests();
    assert!(manifests.len() >= 8, "{} manifests", manifests.len());
    for (member, text) in manifests {
        assert!(
            text.contains("rust-version.workspace = true"),
            "{member}: its rust-version is not the workspace's"
        );
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{member}: it does not inherit the workspace's lints"
        );
    }
}
