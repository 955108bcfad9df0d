//! polkit on the test bus: the shipped action `org.vpud.Vpud1.manage-cards` is registered
//! with its defaults, vpud (user `vpud`, the action's owner) may ask polkit about its
//! callers, and a site's polkit rule is what lets a user other than root administer cards.

use std::fs;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::bus::{card_state, stderr, stdout, SystemBus, ADMIN, MEMBER};
use crate::run;

#[test]
fn card_administration_can_be_granted_through_polkit() {
    let bus = SystemBus::start_with_polkit();
    let mut vpud = bus.start_vpud("vpud");
    bus.wait_for_vpud(&mut vpud);
    let card = "/org/vpud/Vpud1/card/0";

    // polkit answers, and says no: administrator authentication, and no agent to ask.
    let out = bus.call(MEMBER, card, "org.vpud.Vpud1.Card.Drain", &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("org.vpud.Vpud1.Error.AccessDenied"),
        "Drain by a member of vpu without authorization: {out:?}"
    );
    assert_eq!(card_state(&bus), "(<'online'>,)");

    // The rule grants it to vpu-test-admin.
    let out = bus.call(ADMIN, card, "org.vpud.Vpud1.Card.Drain", &[]);
    assert!(
        out.status.success(),
        "Drain by {ADMIN}: {out:?}\n{}",
        vpud.log()
    );
    assert_eq!(card_state(&bus), "(<'draining'>,)");
    let out = bus.call(ADMIN, card, "org.vpud.Vpud1.Card.Resume", &[]);
    assert!(
        out.status.success(),
        "Resume by {ADMIN}: {out:?}\n{}",
        vpud.log()
    );
    assert_eq!(card_state(&bus), "(<'online'>,)");
}

#[test]
fn polkit_registers_the_manage_cards_action() {
    let bus = SystemBus::start_with_polkit();
    let out = run(Command::new("pkaction")
        .args(["--verbose", "--action-id", "org.vpud.Vpud1.manage-cards"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address));
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    for line in [
        "implicit any:      auth_admin",
        "implicit inactive: auth_admin",
        "implicit active:   auth_admin",
        "annotation:        org.freedesktop.policykit.owner -> unix-user:vpud",
    ] {
        assert!(text.contains(line), "missing '{line}':\n{text}");
    }
}

/// What polkit tells user vpud about a process of `user`: vpud may ask (it owns the
/// action), and the answer follows the rules.
fn polkit_answer_for(bus: &SystemBus, user: &str) -> String {
    let mut subject = bus
        .as_user(user, "sleep")
        .arg("30")
        .spawn()
        .expect("start subject process");
    // Once setpriv has exec'd sleep, the process runs as `user`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{}/exe", subject.id()))
        .is_ok_and(|exe| !exe.ends_with("sleep"))
    {
        assert!(Instant::now() < deadline, "setpriv did not exec sleep");
        sleep(Duration::from_millis(10));
    }
    // Field 22 of /proc/PID/stat, after the parenthesised command name.
    let stat = fs::read_to_string(format!("/proc/{}/stat", subject.id())).expect("stat");
    let start_time = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .expect("start time")
        .to_owned();
    let out = run(bus
        .as_user("vpud", "gdbus")
        .args(["call", "--address", &bus.address])
        .args(["--dest", "org.freedesktop.PolicyKit1"])
        .args(["--object-path", "/org/freedesktop/PolicyKit1/Authority"])
        .args([
            "--method",
            "org.freedesktop.PolicyKit1.Authority.CheckAuthorization",
        ])
        .arg(format!(
            "('unix-process', {{'pid': <uint32 {}>, 'start-time': <uint64 {start_time}>}})",
            subject.id()
        ))
        .args(["org.vpud.Vpud1.manage-cards", "@a{ss} {}", "0", "''"]));
    let _ = subject.kill();
    let _ = subject.wait();
    assert!(out.status.success(), "CheckAuthorization as vpud: {out:?}");
    stdout(&out).trim().to_owned()
}

#[test]
fn vpud_may_ask_polkit_about_its_callers() {
    let bus = SystemBus::start_with_polkit();
    // (authorized, challenge, details)
    assert_eq!(
        polkit_answer_for(&bus, ADMIN),
        "((true, false, @a{ss} {}),)"
    );
    assert_eq!(
        polkit_answer_for(&bus, MEMBER),
        "((false, true, @a{ss} {}),)"
    );
}
