//! The protocol's boundary, checked on the dependency graph rather than on the source: the
//! protocol lives in raft-proto so that it cannot reach an async runtime or do IO, and that
//! holds only while nothing in raft-proto's normal dependencies (on any target) brings one in.
//! A grep of the source would miss a dependency pulled in by another dependency; `cargo tree`
//! does not. The second test shows the check sees such crates where they are.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates whose presence would mean the protocol could await, spawn or touch sockets.
const FORBIDDEN: &[&str] = &[
    "async-trait",
    "async-std",
    "futures-io",
    "mio",
    "smol",
    "socket2",
];

/// True for a crate raft-proto must not depend on: the list above, and tokio with its family.
fn forbidden(name: &str) -> bool {
    FORBIDDEN.contains(&name) || name == "tokio" || name.starts_with("tokio-")
}

/// The names of the crates in `package`'s normal (not build, not dev) dependency graph, from
/// `cargo tree`, for every target when `all_targets` (else the host's).
fn normal_dependencies(package: &str, all_targets: bool) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut command = Command::new(cargo);
    command.args([
        "tree",
        "--locked",
        "--manifest-path",
        manifest,
        "--package",
        package,
    ]);
    command.args(["--edges", "normal", "--prefix", "none", "--format", "{p}"]);
    if all_targets {
        command.args(["--target", "all"]);
    }
    let output = command.output().expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Each line is `name vX.Y.Z [(path)] [(proc-macro)] [(*)]`.
    let names: BTreeSet<String> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains(package),
        "cargo tree -p {package} did not list {package}:\n{stdout}"
    );
    names
}

#[test]
fn raft_proto_depends_on_no_async_runtime_and_no_io_crate() {
    let names = normal_dependencies("raft-proto", true);
    assert!(
        names.contains("serde") && names.contains("bytes"),
        "the tree lists raft-proto's own dependencies: {names:?}"
    );
    assert!(
        !names.contains("raft-core"),
        "raft-proto must not depend on raft-core"
    );
    let found: Vec<&String> = names.iter().filter(|name| forbidden(name)).collect();
    assert!(
        found.is_empty(),
        "raft-proto's normal dependency graph holds {found:?}: the protocol must not depend \
         on an async runtime or an IO crate (see `cargo tree -p raft-proto -e normal -i <crate>` \
         for the path); async glue belongs in raft-core"
    );
}

#[test]
fn the_check_sees_tokio_and_async_trait_where_they_are() {
    // raft-core does depend on them: a check that found nothing here would prove nothing
    // about raft-proto either.
    let names = normal_dependencies("raft-core", false);
    let found: BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| forbidden(name))
        .collect();
    assert!(
        found.contains("tokio") && found.contains("async-trait"),
        "raft-core's tree should show tokio and async-trait, found {found:?}"
    );
    assert!(
        names.contains("raft-proto"),
        "raft-core depends on raft-proto"
    );
}
