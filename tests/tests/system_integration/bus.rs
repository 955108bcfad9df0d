//! The system-bus policy (`org.vpud.Vpud1.conf`) on a real `dbus-daemon`.
//!
//! The bus runs with Debian's own `/usr/share/dbus-1/system.conf` (default-deny for method
//! calls and name ownership), changed only to listen on a private socket, stay in the
//! foreground as root, and include our policy as installed by the install command instead
//! of the host's `system.d`. Clients are real (`dbus-send`, `gdbus`) and run as real users
//! through `setpriv`: `vpud`, `vpu-test-member` (in group `vpu`), `vpu-test-outsider` (not),
//! and root. The daemon is the installed `vpud` with one emulated card, run as user `vpud`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{ensure_users, install, require_root, run, TempDir};

pub(crate) const NAME: &str = "org.vpud.Vpud1";
pub(crate) const MEMBER: &str = "vpu-test-member";
pub(crate) const OUTSIDER: &str = "vpu-test-outsider";
/// In group `vpu`, and granted `org.vpud.Vpud1.manage-cards` by [`POLKIT_RULE`].
pub(crate) const ADMIN: &str = "vpu-test-admin";

/// A private system bus with our policy, and optionally polkit.
pub(crate) struct SystemBus {
    tmp: TempDir,
    root: PathBuf,
    daemon: Child,
    pub(crate) address: String,
    /// polkitd serving this bus, when started.
    polkitd: Option<Child>,
}

/// A polkit rule granting card administration to `vpu-test-admin`, as an operator would
/// grant it (see `docs/operations.md`).
const POLKIT_RULE: &str = r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.vpud.Vpud1.manage-cards" && subject.user == "vpu-test-admin")
        return polkit.Result.YES;
});
"#;

/// Runs polkitd on our bus with the installed action file and [`POLKIT_RULE`] (bound over
/// the system's in a private mount namespace) beside the system's default rules.
const POLKITD: &str = r#"set -e
mount --bind "$ACTIONS" /usr/share/polkit-1/actions
mount --bind "$RULES" /etc/polkit-1/rules.d
exec /usr/lib/polkit-1/polkitd --no-debug
"#;

impl SystemBus {
    fn start() -> SystemBus {
        SystemBus::start_with(false)
    }

    /// The bus, and polkitd on it.
    pub(crate) fn start_with_polkit() -> SystemBus {
        let mut bus = SystemBus::start_with(true);
        let rules = bus.tmp.path().join("polkit-rules");
        fs::create_dir_all(&rules).expect("mkdir rules");
        fs::write(rules.join("50-vpud-test.rules"), POLKIT_RULE).expect("write rule");
        let log = fs::File::create(bus.tmp.path().join("polkitd.log")).expect("polkitd log");
        let polkitd = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", POLKITD])
            .env("ACTIONS", bus.root.join("usr/share/polkit-1/actions"))
            .env("RULES", &rules)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start polkitd (package polkitd)");
        bus.polkitd = Some(polkitd);
        bus.wait_for_name("org.freedesktop.PolicyKit1", || None);
        bus
    }

    fn start_with(polkit: bool) -> SystemBus {
        require_root();
        ensure_users();
        let tmp = TempDir::new("bus");
        let root = tmp.path().join("root");
        let out = install(&root, &[]);
        assert!(out.status.success(), "install failed: {out:?}");

        let socket = tmp.path().join("system_bus_socket");
        let policy = root.join("usr/share/dbus-1/system.d/org.vpud.Vpud1.conf");
        let mut config = fs::read_to_string("/usr/share/dbus-1/system.conf")
            .expect("Debian's system bus configuration (package dbus-system-bus-common)");
        for (from, to) in [
            ("<user>messagebus</user>", String::new()),
            ("<fork/>", String::new()),
            (
                "<standard_system_servicedirs/>",
                format!(
                    "<servicedir>{}</servicedir>",
                    root.join("usr/share/dbus-1/system-services").display()
                ),
            ),
            (
                "<servicehelper>/usr/lib/dbus-1.0/dbus-daemon-launch-helper</servicehelper>",
                String::new(),
            ),
            ("<pidfile>/run/dbus/pid</pidfile>", String::new()),
            ("<syslog/>", String::new()),
            (
                "<listen>unix:path=/run/dbus/system_bus_socket</listen>",
                format!("<listen>unix:path={}</listen>", socket.display()),
            ),
            (
                "<includedir>system.d</includedir>",
                format!(
                    "<include>{}</include>{}",
                    policy.display(),
                    if polkit {
                        "<include>/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "<includedir>/etc/dbus-1/system.d</includedir>",
                String::new(),
            ),
            (
                "<include ignore_missing=\"yes\">/etc/dbus-1/system-local.conf</include>",
                String::new(),
            ),
        ] {
            assert!(config.contains(from), "system.conf lacks {from}");
            config = config.replace(from, &to);
        }
        let config_path = tmp.path().join("system.conf");
        fs::write(&config_path, config).expect("write bus config");

        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(fs::File::create(tmp.path().join("dbus-daemon.log")).expect("bus log"))
            .spawn()
            .expect("start dbus-daemon (package dbus-daemon)");
        let mut address = String::new();
        BufReader::new(daemon.stdout.take().expect("piped stdout"))
            .read_line(&mut address)
            .expect("bus address");
        let address = address.trim().to_owned();
        assert!(address.starts_with("unix:path="), "address {address:?}");
        SystemBus {
            tmp,
            root,
            daemon,
            address,
            polkitd: None,
        }
    }

    /// A command run as `user` ("root": as is) with that user's groups.
    pub(crate) fn as_user(&self, user: &str, program: &str) -> Command {
        let mut cmd = if user == "root" {
            Command::new(program)
        } else {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                .arg(program);
            cmd
        };
        cmd.current_dir(self.tmp.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        cmd
    }

    /// Asks the bus to make `user` the owner of org.vpud.Vpud1.
    fn request_name(&self, user: &str) -> Output {
        run(self
            .as_user(user, "dbus-send")
            .arg(format!("--bus={}", self.address))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
            ])
            .arg(format!("string:{NAME}"))
            // DBUS_NAME_FLAG_DO_NOT_QUEUE
            .arg("uint32:4"))
    }

    /// Starts the installed vpud as `user` with one emulated card.
    pub(crate) fn start_vpud(&self, user: &str) -> Vpud {
        let log = self.tmp.path().join(format!("vpud-{user}.log"));
        let file = fs::File::create(&log).expect("vpud log");
        let child = self
            .as_user(
                user,
                self.root.join("usr/bin/vpud").to_str().expect("utf-8 path"),
            )
            .args(["--bus", &self.address, "--emulate", "1"])
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("start vpud");
        Vpud { child, log }
    }

    /// Calls a method with gdbus as `user`.
    pub(crate) fn call(&self, user: &str, path: &str, method: &str, args: &[&str]) -> Output {
        run(self
            .as_user(user, "gdbus")
            .args(["call", "--address", &self.address, "--dest", NAME])
            .args(["--object-path", path, "--method", method])
            .args(args))
    }

    /// Waits until vpud owns its name, or fails with its log.
    pub(crate) fn wait_for_vpud(&self, vpud: &mut Vpud) {
        self.wait_for_name(NAME, || {
            vpud.child
                .try_wait()
                .expect("try_wait")
                .map(|status| format!("vpud exited ({status}):\n{}", vpud.log()))
        });
    }

    /// Waits until `name` has an owner; `failed` says why it never will.
    fn wait_for_name(&self, name: &str, mut failed: impl FnMut() -> Option<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(Command::new("dbus-send")
                .arg(format!("--bus={}", self.address))
                .args([
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                ])
                .arg(format!("string:{name}")));
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                return;
            }
            if let Some(why) = failed() {
                panic!("{why}");
            }
            assert!(Instant::now() < deadline, "nobody owns {name} after 30 s");
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SystemBus {
    fn drop(&mut self) {
        if let Some(mut polkitd) = self.polkitd.take() {
            let _ = polkitd.kill();
            let _ = polkitd.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A running vpud.
pub(crate) struct Vpud {
    child: Child,
    log: PathBuf,
}

impl Vpud {
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Vpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The call was refused by the bus's policy.
fn assert_bus_denied(out: &Output, what: &str) {
    assert!(
        !out.status.success() && stderr(out).contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{what}: expected the bus to refuse, got {out:?}"
    );
}

#[test]
fn only_user_vpud_may_own_the_name() {
    let bus = SystemBus::start();
    for user in ["root", MEMBER, OUTSIDER] {
        let out = bus.request_name(user);
        assert_bus_denied(&out, &format!("{user} owning {NAME}"));
    }
    let out = bus.request_name("vpud");
    assert!(out.status.success(), "{out:?}");
    // 1: DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
    assert!(stdout(&out).contains("uint32 1"), "{out:?}");
}

#[test]
fn the_bus_accepts_the_activation_file() {
    let bus = SystemBus::start();
    let out = run(Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListActivatableNames",
        ]));
    assert!(
        stdout(&out).contains(&format!("string \"{NAME}\"")),
        "{NAME} not activatable: {out:?}"
    );
}

#[test]
fn vpud_run_as_another_user_cannot_take_the_name() {
    let bus = SystemBus::start();
    let mut vpud = bus.start_vpud(MEMBER);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = vpud.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "vpud kept running:\n{}",
            vpud.log()
        );
        sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "vpud as {MEMBER} exited {status}");
    assert!(
        vpud.log().contains(NAME) && vpud.log().contains("not allowed to own"),
        "the error names the bus name:\n{}",
        vpud.log()
    );
}

const SESSION_PARAMS: &str = "{'codec': <'h264'>, 'width': <uint32 320>, 'height': <uint32 240>, \
     'framerate_num': <uint32 30>, 'bitrate': <uint32 500000>}";

#[test]
fn members_of_vpu_are_served_and_others_refused() {
    let bus = SystemBus::start();
    let mut vpud = bus.start_vpud("vpud");
    bus.wait_for_vpud(&mut vpud);
    let manager = "/org/vpud/Vpud1";

    let out = bus.call(
        OUTSIDER,
        manager,
        "org.vpud.Vpud1.Manager.CreateSession",
        &[SESSION_PARAMS],
    );
    assert_bus_denied(&out, "CreateSession by a user outside vpu");
    let out = bus.call(
        OUTSIDER,
        manager,
        "org.freedesktop.DBus.Properties.Get",
        &["org.vpud.Vpud1.Manager", "Version"],
    );
    assert_bus_denied(&out, "property read by a user outside vpu");

    for user in [MEMBER, "root"] {
        let out = bus.call(
            user,
            manager,
            "org.vpud.Vpud1.Manager.CreateSession",
            &[SESSION_PARAMS],
        );
        assert!(
            out.status.success() && stdout(&out).contains("objectpath '/org/vpud/Vpud1/session/"),
            "CreateSession by {user}: {out:?}\n{}",
            vpud.log()
        );
        let out = bus.call(
            user,
            manager,
            "org.freedesktop.DBus.Properties.Get",
            &["org.vpud.Vpud1.Manager", "Version"],
        );
        assert!(out.status.success(), "Version read by {user}: {out:?}");
        let out = bus.call(
            user,
            manager,
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
            &[],
        );
        assert!(
            out.status.success() && stdout(&out).contains("/org/vpud/Vpud1/card/0"),
            "GetManagedObjects by {user}: {out:?}"
        );
        let out = bus.call(user, manager, "org.freedesktop.DBus.Peer.Ping", &[]);
        assert!(out.status.success(), "Ping by {user}: {out:?}");
        let out = run(bus
            .as_user(user, "gdbus")
            .args(["introspect", "--address", &bus.address, "--dest", NAME])
            .args(["--object-path", manager]));
        assert!(
            out.status.success() && stdout(&out).contains("org.vpud.Vpud1.Manager"),
            "Introspect by {user}: {out:?}"
        );
    }
    // Writing properties is for root only.
    let out = bus.call(
        MEMBER,
        manager,
        "org.freedesktop.DBus.Properties.Set",
        &["org.vpud.Vpud1.Manager", "Policy", "<'pack'>"],
    );
    assert_bus_denied(&out, "property write by a member of vpu");
}

pub(crate) fn card_state(bus: &SystemBus) -> String {
    let out = bus.call(
        "root",
        "/org/vpud/Vpud1/card/0",
        "org.freedesktop.DBus.Properties.Get",
        &["org.vpud.Vpud1.Card", "State"],
    );
    assert!(out.status.success(), "{out:?}");
    stdout(&out).trim().to_owned()
}

#[test]
fn card_administration_is_for_root_only() {
    let bus = SystemBus::start();
    let mut vpud = bus.start_vpud("vpud");
    bus.wait_for_vpud(&mut vpud);
    let card = "/org/vpud/Vpud1/card/0";
    assert_eq!(card_state(&bus), "(<'online'>,)");

    // Members of vpu reach vpud, which refuses them (no polkit authorization on this bus);
    // users outside vpu do not even reach it.
    for method in ["Reset", "Drain", "Resume"] {
        let out = bus.call(MEMBER, card, &format!("org.vpud.Vpud1.Card.{method}"), &[]);
        assert!(
            !out.status.success() && stderr(&out).contains("org.vpud.Vpud1.Error.AccessDenied"),
            "Card.{method} by a member of vpu: {out:?}"
        );
        let out = bus.call(
            OUTSIDER,
            card,
            &format!("org.vpud.Vpud1.Card.{method}"),
            &[],
        );
        assert_bus_denied(&out, &format!("Card.{method} by a user outside vpu"));
    }
    let out = bus.call(
        MEMBER,
        card,
        "org.vpud.Vpud1.Emulator.InjectFault",
        &["hang-engine", "@a{sv} {}"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("org.vpud.Vpud1.Error.AccessDenied"),
        "InjectFault by a member of vpu: {out:?}"
    );
    assert_eq!(
        card_state(&bus),
        "(<'online'>,)",
        "refused calls changed nothing"
    );

    // Root is served.
    let out = bus.call("root", card, "org.vpud.Vpud1.Card.Drain", &[]);
    assert!(
        out.status.success(),
        "Drain by root: {out:?}\n{}",
        vpud.log()
    );
    assert_eq!(card_state(&bus), "(<'draining'>,)");
    let out = bus.call("root", card, "org.vpud.Vpud1.Card.Resume", &[]);
    assert!(
        out.status.success(),
        "Resume by root: {out:?}\n{}",
        vpud.log()
    );
    assert_eq!(card_state(&bus), "(<'online'>,)");
}
