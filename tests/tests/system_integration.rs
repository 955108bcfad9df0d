//! System integration: the files that make vpud a system service, checked with the tools
//! that consume them.
//!
//! - the install command (`daemon/dist/install.sh`) places every file, honouring `--prefix`,
//!   `--destdir` and `DESTDIR`;
//! - `systemd-analyze verify` accepts the unit as installed into a temporary root, and
//!   `systemd-analyze security --offline=true` rates it 2.0 or lower;
//! - `systemd-sysusers` creates the service user in group `vpu`;
//! - the udev rules, run by the real `udevadm test` against a synthetic sysfs
//!   ([`udev`]), bind exactly the listed card IDs and give only their VFIO group nodes to
//!   group `vpu`;
//! - the bus policy, loaded by a real `dbus-daemon` with a system-bus configuration
//!   ([`bus`]), lets only user `vpud` own `org.vpud.Vpud1`, refuses callers outside group
//!   `vpu`, and leaves card administration to root (or polkit);
//! - in a VM booting systemd ([`vm`]), vpud runs under its unit as shipped, drives a device
//!   through VFIO and serves sessions to `vpuctl` over the system bus.
//!
//! These tests need root (users, mount namespaces, `setpriv`) and Debian's `systemd`,
//! `udev`, `dbus`, `polkitd`, `util-linux`, `qemu-system-x86`, `linux-image-cloud-amd64`
//! and `cpio`; they fail, never skip, without them. They add the users `vpud`,
//! `vpu-test-member`, `vpu-test-admin`, `vpu-test-outsider` and the group `vpu` to the
//! host (`systemd-sysusers`, idempotent).
//!
//! The binaries under test are the workspace's `vpud` and `vpuctl`, found next to this
//! test's own target directory (`cargo build -p vpud -p vpuctl --bins` first) or in `VPUD_BIN_DIR`.

#[path = "system_integration/bus.rs"]
mod bus;
#[path = "system_integration/polkit.rs"]
mod polkit;
#[path = "system_integration/udev.rs"]
mod udev;
#[path = "system_integration/vm.rs"]
mod vm;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace's root directory.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A directory under the system temporary directory, removed on drop. World-readable, so
/// that the unprivileged users of the bus tests can reach sockets in it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vpud-si-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temporary directory");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to completion; a command that cannot be started is a test failure.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is its Debian package installed?)"))
}

/// Runs a command that must succeed and returns its standard output.
fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test unless it runs as root.
fn require_root() {
    let uid = check(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "the system integration tests need root (users, mount namespaces, setpriv)"
    );
}

/// The directory holding the built `vpud` and `vpuctl`.
fn binaries() -> PathBuf {
    let dir = match std::env::var_os("VPUD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        // This test runs as target/<profile>/deps/system_integration-HASH.
        None => std::env::current_exe()
            .expect("current_exe")
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps")
            .to_path_buf(),
    };
    for bin in ["vpud", "vpuctl"] {
        assert!(
            dir.join(bin).is_file(),
            "{} not found: build the binaries with `cargo build -p vpud -p vpuctl --bins` (or set VPUD_BIN_DIR)",
            dir.join(bin).display()
        );
    }
    dir
}

/// Installs everything with the install command into `destdir` and returns the path of
/// the installed unit.
fn install(destdir: &Path, extra: &[&str]) -> Output {
    run(Command::new(workspace().join("daemon/dist/install.sh"))
        .arg("--destdir")
        .arg(destdir)
        .arg("--from")
        .arg(binaries())
        .args(extra)
        .env_remove("DESTDIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file the install command places, relative to the root, with its mode.
const INSTALLED: &[(&str, u32)] = &[
    ("usr/bin/vpud", 0o755),
    ("usr/bin/vpuctl", 0o755),
    ("usr/lib/systemd/system/vpud.service", 0o644),
    ("usr/lib/sysusers.d/vpud.conf", 0o644),
    ("usr/lib/udev/rules.d/70-vpud.rules", 0o644),
    ("usr/share/dbus-1/system.d/org.vpud.Vpud1.conf", 0o644),
    (
        "usr/share/dbus-1/system-services/org.vpud.Vpud1.service",
        0o644,
    ),
    ("usr/share/dbus-1/interfaces/org.vpud.Vpud1.xml", 0o644),
    ("usr/share/polkit-1/actions/org.vpud.Vpud1.policy", 0o644),
    ("usr/share/doc/vpud/vpud.toml.example", 0o644),
    ("usr/share/doc/vpud/operations.md", 0o644),
    ("usr/share/doc/vpud/vpud-grafana.json", 0o644),
    ("etc/vpud/vpud.toml", 0o644),
];

/// The lines of a unit or activation file that set `key`.
fn settings<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn install_places_every_file_where_its_consumer_reads_it() {
    let tmp = TempDir::new("install");
    let root = tmp.path().join("root");
    let out = install(&root, &[]);
    assert!(out.status.success(), "install failed: {out:?}");

    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(&root).expect("under root").to_path_buf());
            }
        }
    }
    found.sort();
    let mut expected: Vec<PathBuf> = INSTALLED.iter().map(|(p, _)| PathBuf::from(p)).collect();
    expected.sort();
    assert_eq!(found, expected, "installed files");
    for (path, mode) in INSTALLED {
        let meta = fs::metadata(root.join(path)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {path}");
    }
    assert_eq!(
        fs::read(root.join("usr/bin/vpud")).expect("installed vpud"),
        fs::read(binaries().join("vpud")).expect("built vpud"),
        "the installed vpud is the built one"
    );

    let unit = read(&root.join("usr/lib/systemd/system/vpud.service"));
    assert_eq!(settings(&unit, "ExecStart"), ["/usr/bin/vpud --bus system"]);
    let activation = read(&root.join("usr/share/dbus-1/system-services/org.vpud.Vpud1.service"));
    assert_eq!(
        settings(&activation, "Exec"),
        ["/usr/bin/vpud --bus system"]
    );
    assert_eq!(settings(&activation, "SystemdService"), ["vpud.service"]);
    assert_eq!(settings(&activation, "User"), ["vpud"]);
    assert_eq!(settings(&activation, "Name"), ["org.vpud.Vpud1"]);

    // A second install keeps the administrator's configuration.
    let config = root.join("etc/vpud/vpud.toml");
    fs::write(&config, "policy = \"pack\"\n").expect("edit config");
    let out = install(&root, &[]);
    assert!(out.status.success(), "reinstall failed: {out:?}");
    assert_eq!(read(&config), "policy = \"pack\"\n");
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
}

#[test]
fn install_honours_prefix_and_the_destdir_variable() {
    let tmp = TempDir::new("prefix");
    let root = tmp.path().join("stage");
    check(
        Command::new(workspace().join("daemon/dist/install.sh"))
            .args(["--prefix", "/opt/vpud", "--sysconfdir", "/etc/opt"])
            .arg("--from")
            .arg(binaries())
            .env("DESTDIR", &root),
    );
    assert!(root.join("opt/vpud/bin/vpud").is_file());
    assert!(root.join("opt/vpud/bin/vpuctl").is_file());
    assert!(root.join("opt/vpud/share/doc/vpud/operations.md").is_file());
    assert!(root.join("etc/opt/vpud/vpud.toml").is_file());
    // Where systemd and D-Bus read them, whatever the prefix, and pointing at the prefix.
    let unit = read(&root.join("usr/lib/systemd/system/vpud.service"));
    assert_eq!(
        settings(&unit, "ExecStart"),
        ["/opt/vpud/bin/vpud --bus system"]
    );
    let activation = read(&root.join("usr/share/dbus-1/system-services/org.vpud.Vpud1.service"));
    assert_eq!(
        settings(&activation, "Exec"),
        ["/opt/vpud/bin/vpud --bus system"]
    );
}

#[test]
fn install_rejects_bad_arguments_with_a_message() {
    let tmp = TempDir::new("badargs");
    for args in [
        &["--prefix", "relative/dir"][..],
        &["--frobnicate"][..],
        &["--destdir"][..],
    ] {
        let out = run(Command::new(workspace().join("daemon/dist/install.sh")).args(args));
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("install.sh: "), "{args:?}: {err}");
    }
    let out = install(tmp.path(), &["--from", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release -p vpud"));
    assert!(
        fs::read_dir(tmp.path()).expect("read_dir").next().is_none(),
        "nothing installed after an error"
    );
}

/// Installs into a temporary root that also holds the host's systemd units (the targets
/// and `dbus.socket` the unit depends on), as on a real system.
fn root_with_host_units(tmp: &TempDir) -> PathBuf {
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("usr/lib/systemd")).expect("mkdir");
    check(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(root.join("usr/lib/systemd/")),
    );
    let out = install(&root, &[]);
    assert!(out.status.success(), "install failed: {out:?}");
    root
}

#[test]
fn installed_unit_passes_systemd_analyze_verify() {
    let tmp = TempDir::new("verify");
    let root = root_with_host_units(&tmp);
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("vpud.service"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{out:?}");

    // The check has teeth: without the binary the same unit is refused.
    fs::remove_file(root.join("usr/bin/vpud")).expect("remove vpud");
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("vpud.service"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/usr/bin/vpud"));
}

#[test]
fn installed_unit_exposure_is_at_most_2() {
    let tmp = TempDir::new("security");
    let root = root_with_host_units(&tmp);
    let unit = root.join("usr/lib/systemd/system/vpud.service");
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for vpud.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}\n{out:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    for line in [
        "Service runs under a static non-root user identity",
        "Service has no access to the host's network",
        "Service cannot create writable executable memory mappings",
    ] {
        assert!(text.contains(line), "missing '{line}':\n{text}");
    }
}

#[test]
fn unit_declares_readiness_watchdog_user_and_device_access() {
    let unit = read(&workspace().join("daemon/dist/vpud.service"));
    for (key, value) in [
        ("Type", "notify"),
        ("BusName", "org.vpud.Vpud1"),
        ("Restart", "on-failure"),
        ("User", "vpud"),
        ("SupplementaryGroups", "vpu"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("DevicePolicy", "closed"),
        ("StateDirectory", "vpud"),
        ("RuntimeDirectory", "vpud"),
    ] {
        assert_eq!(settings(&unit, key), [value], "{key}=");
    }
    assert_eq!(
        settings(&unit, "DeviceAllow"),
        ["/dev/vfio/vfio rw", "char-vfio rw"]
    );
    assert_eq!(
        settings(&unit, "SystemCallFilter").first(),
        Some(&"@system-service")
    );
    let watchdog = settings(&unit, "WatchdogSec");
    assert!(
        watchdog.len() == 1 && watchdog[0].trim_end_matches('s').parse::<u32>().is_ok(),
        "WatchdogSec= {watchdog:?}"
    );
    assert_eq!(settings(&unit, "LimitMEMLOCK").len(), 1);
}

#[test]
fn sysusers_creates_the_service_user_in_group_vpu() {
    let tmp = TempDir::new("sysusers");
    fs::create_dir_all(tmp.path().join("etc")).expect("mkdir etc");
    check(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", tmp.path().display()))
            .arg(workspace().join("daemon/dist/vpud.sysusers")),
    );
    let passwd = read(&tmp.path().join("etc/passwd"));
    let group = read(&tmp.path().join("etc/group"));
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("vpud:"))
        .expect("user vpud")
        .split(':')
        .collect();
    assert_ne!(user[2], "0");
    assert_eq!(user[6], "/usr/sbin/nologin");
    let vpu: Vec<&str> = group
        .lines()
        .find(|l| l.starts_with("vpu:"))
        .expect("group vpu")
        .split(':')
        .collect();
    assert_eq!(vpu[3], "vpud", "vpud is the only member of vpu");
}

/// Creates the service user and group from the shipped sysusers file, and three test
/// users: `vpu-test-member` and `vpu-test-admin` (in group `vpu`), `vpu-test-outsider`
/// (not). Idempotent.
fn ensure_users() {
    require_root();
    check(Command::new("systemd-sysusers").arg(workspace().join("daemon/dist/vpud.sysusers")));
    check(Command::new("systemd-sysusers").args([
        "--inline",
        "u vpu-test-member - \"vpud test user in group vpu\" /nonexistent",
        "m vpu-test-member vpu",
        "u vpu-test-admin - \"vpud test user granted card administration\" /nonexistent",
        "m vpu-test-admin vpu",
        "u vpu-test-outsider - \"vpud test user outside group vpu\" /nonexistent",
    ]));
    let groups = check(Command::new("id").args(["-nG", "vpu-test-outsider"]));
    assert!(
        !groups.split_whitespace().any(|g| g == "vpu"),
        "vpu-test-outsider must not be in group vpu: {groups}"
    );
}

/// The example configuration, with every option uncommented, is what vpud parses as its
/// defaults: the names and the values shown are vpud's.
#[test]
fn example_config_shows_every_option_with_its_default() {
    let example = read(&workspace().join("daemon/dist/vpud.toml"));
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(uncommented, example, "no option found");
    let parsed = vpud::config::Config::parse(&uncommented, "daemon/dist/vpud.toml")
        .unwrap_or_else(|e| panic!("the example does not parse: {e}"));
    assert_eq!(parsed, vpud::config::Config::default());

    // Every field of the configuration is there, as an option or a section.
    let source = read(&workspace().join("daemon/src/config.rs"));
    let fields: Vec<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
        .map(|(name, _)| name)
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(
        fields.contains(&"policy") && fields.contains(&"command_ms"),
        "fields found in config.rs: {fields:?}"
    );
    for field in fields {
        assert!(
            example.contains(&format!("#{field} = ")) || example.contains(&format!("[{field}]")),
            "option {field} is not in the example configuration"
        );
    }
}
