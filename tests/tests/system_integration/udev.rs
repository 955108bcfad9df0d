//! The udev rules (`udev/70-vpud.rules`), run by the real `udevadm test` in a private mount
//! namespace where `/sys` is a synthetic sysfs holding the devices of each case, `/dev` a
//! scratch directory with real device nodes, and the rules directories hold only our file.
//!
//! `udevadm test` parses the rules, evaluates them against the device, performs the `ATTR`
//! writes and runs `PROGRAM`s (both land in the synthetic sysfs), applies owner and mode to
//! the device node, and prints what it would `RUN`; the `RUN` commands are then executed in
//! the same namespace so that their effect on the synthetic sysfs can be checked too.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use crate::{check, ensure_users, require_root, run, workspace, TempDir};

/// The card's IDs, as `ffi/include/vpu.h` defines them.
const VPU_VENDOR: &str = "0x1ded";
const VPU_DEVICE: &str = "0x5650";
const NVME_CLASS: &str = "0x010802";

/// Sets up the namespace: the synthetic sysfs and /dev, only our rules, a scratch udev
/// database; then runs the given command.
const NAMESPACE_SETUP: &str = r#"set -e
mount --bind "$T/sys" /sys
mount --bind "$T/rules" /etc/udev/rules.d
for d in /usr/lib/udev/rules.d /usr/local/lib/udev/rules.d; do
    if [ -d "$d" ]; then mount --bind "$T/empty" "$d"; fi
done
mount -t tmpfs tmpfs /run/udev
mount --bind /dev/null "$T/dev/null"
mount --bind "$T/dev" /dev
exec "$@"
"#;

/// A synthetic sysfs and /dev.
struct FakeSystem {
    tmp: TempDir,
}

/// What `udevadm test` did with one device.
struct Outcome {
    /// Everything udevadm printed (log and properties).
    text: String,
    /// The commands it would `RUN`.
    runs: Vec<String>,
}

impl Outcome {
    fn property(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// What udev said about our file while loading it (syntax errors, unknown keys, users
    /// or groups, dangling GOTOs...): those lines begin with the file's path, the lines
    /// about a device's processing with the device's name.
    fn load_diagnostics(&self) -> Vec<&str> {
        self.text
            .lines()
            .filter(|l| l.starts_with("/etc/udev/rules.d/70-vpud.rules:"))
            .collect()
    }

    /// Log lines that name a line of our rules file: every rule that did something.
    fn rule_lines(&self) -> Vec<&str> {
        self.text
            .lines()
            .filter(|l| l.contains("70-vpud.rules:"))
            .collect()
    }
}

impl FakeSystem {
    fn new() -> FakeSystem {
        let rules = fs::read_to_string(workspace().join("udev/70-vpud.rules")).expect("rules");
        FakeSystem::with_rules(&rules)
    }

    fn with_rules(rules: &str) -> FakeSystem {
        require_root();
        ensure_users();
        let tmp = TempDir::new("udev");
        let t = tmp.path();
        for dir in [
            "sys/bus/pci/drivers",
            "sys/class/vfio",
            "sys/class/misc",
            "sys/devices/pci0000:00",
            "sys/devices/virtual/vfio",
            "sys/devices/virtual/misc",
            "sys/kernel/iommu_groups",
            "dev/vfio",
            "rules",
            "empty",
        ] {
            fs::create_dir_all(t.join(dir)).expect("mkdir");
        }
        fs::write(t.join("sys/bus/pci/drivers_probe"), "").expect("drivers_probe");
        fs::write(t.join("dev/null"), "").expect("dev/null mount point");
        fs::write(t.join("rules/70-vpud.rules"), rules).expect("write rules");
        FakeSystem { tmp }
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.tmp.path().join("sys").join(rel)
    }

    fn read_sys(&self, rel: &str) -> String {
        fs::read_to_string(self.sys(rel)).expect("read synthetic sysfs")
    }

    /// Adds a PCI function, optionally bound to `driver`; returns its devpath.
    fn pci(
        &self,
        bdf: &str,
        vendor: &str,
        device: &str,
        class: &str,
        driver: Option<&str>,
    ) -> String {
        let devpath = format!("/devices/pci0000:00/{bdf}");
        let dir = self.sys(&devpath[1..]);
        fs::create_dir_all(&dir).expect("mkdir device");
        let id = |s: &str| s.trim_start_matches("0x").to_uppercase();
        fs::write(
            dir.join("uevent"),
            format!(
                "PCI_CLASS={}\nPCI_ID={}:{}\nPCI_SLOT_NAME={bdf}\n",
                class.trim_start_matches("0x").trim_start_matches('0'),
                id(vendor),
                id(device)
            ),
        )
        .expect("uevent");
        for (attr, value) in [
            ("vendor", vendor),
            ("device", device),
            ("class", class),
            ("driver_override", "(null)"),
        ] {
            fs::write(dir.join(attr), format!("{value}\n")).expect("attribute");
        }
        symlink("../../../bus/pci", dir.join("subsystem")).expect("subsystem link");
        if let Some(driver) = driver {
            let ddir = self.sys(&format!("bus/pci/drivers/{driver}"));
            fs::create_dir_all(&ddir).expect("driver dir");
            fs::write(ddir.join("unbind"), "").expect("unbind");
            symlink(
                format!("../../../bus/pci/drivers/{driver}"),
                dir.join("driver"),
            )
            .expect("driver link");
        }
        devpath
    }

    /// Adds VFIO group `n` holding the given PCI functions, with its node /dev/vfio/n
    /// (root:root 0600, as devtmpfs creates it); returns its devpath.
    fn vfio_group(&self, n: u32, members: &[&str]) -> String {
        let devpath = format!("/devices/virtual/vfio/{n}");
        let dir = self.sys(&devpath[1..]);
        fs::create_dir_all(&dir).expect("mkdir group device");
        fs::write(
            dir.join("uevent"),
            format!("MAJOR=242\nMINOR={n}\nDEVNAME=vfio/{n}\n"),
        )
        .expect("uevent");
        fs::write(dir.join("dev"), format!("242:{n}\n")).expect("dev");
        symlink("../../../../class/vfio", dir.join("subsystem")).expect("subsystem link");
        let gdir = self.sys(&format!("kernel/iommu_groups/{n}/devices"));
        fs::create_dir_all(&gdir).expect("iommu group");
        for bdf in members {
            symlink(
                format!("../../../../devices/pci0000:00/{bdf}"),
                gdir.join(bdf),
            )
            .expect("group member link");
        }
        self.mknod(&format!("vfio/{n}"), 242, n, "0600");
        devpath
    }

    /// Adds the VFIO container node /dev/vfio/vfio (misc 10:196, 0666); returns its devpath.
    fn vfio_container(&self) -> String {
        let devpath = "/devices/virtual/misc/vfio".to_owned();
        let dir = self.sys(&devpath[1..]);
        fs::create_dir_all(&dir).expect("mkdir misc device");
        fs::write(
            dir.join("uevent"),
            "MAJOR=10\nMINOR=196\nDEVNAME=vfio/vfio\n",
        )
        .expect("uevent");
        fs::write(dir.join("dev"), "10:196\n").expect("dev");
        symlink("../../../../class/misc", dir.join("subsystem")).expect("subsystem link");
        self.mknod("vfio/vfio", 10, 196, "0666");
        devpath
    }

    fn mknod(&self, name: &str, major: u32, minor: u32, mode: &str) {
        let path = self.tmp.path().join("dev").join(name);
        check(Command::new("mknod").args(["-m", mode]).arg(&path).args([
            "c",
            &major.to_string(),
            &minor.to_string(),
        ]));
    }

    /// Owner group name and mode of a node in the synthetic /dev.
    fn node(&self, name: &str) -> (String, u32) {
        let meta = fs::metadata(self.tmp.path().join("dev").join(name)).expect("stat node");
        let group = check(Command::new("getent").args(["group", &meta.gid().to_string()]));
        let group = group.split(':').next().unwrap_or_default().to_owned();
        (group, meta.permissions().mode() & 0o7777)
    }

    fn in_namespace(&self, cmd: &[&str]) -> std::process::Output {
        run(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(NAMESPACE_SETUP)
            .arg("sh")
            .args(cmd)
            .env("T", self.tmp.path())
            .env("SYSTEMD_DEVICE_VERIFY_SYSFS", "0")
            .env("SYSTEMD_LOG_LEVEL", "debug"))
    }

    /// Runs `udevadm test` for one device, then the `RUN` commands it lists (builtins
    /// excepted: they are returned but not run).
    fn udev(&self, action: &str, devpath: &str) -> Outcome {
        let out = self.in_namespace(&[
            "udevadm",
            "test",
            &format!("--action={action}"),
            &format!("/sys{devpath}"),
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.status.success(), "udevadm test failed:\n{text}");
        let outcome = Outcome {
            text,
            runs: Vec::new(),
        };
        let diagnostics = outcome.load_diagnostics();
        assert!(
            diagnostics.is_empty(),
            "udev complains about the rules: {diagnostics:#?}"
        );
        let text = outcome.text;
        let runs: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("run: '")?.strip_suffix('\''))
            .map(str::to_owned)
            .collect();
        for cmd in runs.iter().filter(|c| !c.starts_with("kmod ")) {
            let out = self.in_namespace(&["sh", "-c", cmd]);
            assert!(out.status.success(), "RUN {cmd} failed: {out:?}");
        }
        Outcome { text, runs }
    }
}

#[test]
fn udev_rules_parse_cleanly() {
    let sys = FakeSystem::new();
    let dev = sys.pci("0000:00:04.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    let out = sys.udev("add", &dev);
    assert!(
        out.text
            .contains("Reading rules file: /etc/udev/rules.d/70-vpud.rules"),
        "{}",
        out.text
    );
    // `udevadm verify` arrived in systemd 253; where it exists, it must accept the file.
    let verify = run(Command::new("udevadm").args(["verify", "--help"]));
    if verify.status.success() {
        check(
            Command::new("udevadm")
                .args(["verify", "--resolve-names=never"])
                .arg(workspace().join("udev/70-vpud.rules")),
        );
    }
}

/// The parse check has teeth: a broken rule is reported.
#[test]
fn udev_parse_check_catches_a_broken_rule() {
    let rules = fs::read_to_string(workspace().join("udev/70-vpud.rules")).expect("rules");
    let broken = rules.replacen("ATTR{vendor}==", "ATTR{vendor}=~", 1);
    assert_ne!(broken, rules);
    let sys = FakeSystem::with_rules(&broken);
    let dev = sys.pci("0000:00:04.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    let out = sys.in_namespace(&["udevadm", "test", "--action=add", &format!("/sys{dev}")]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.lines()
            .any(|l| l.starts_with("/etc/udev/rules.d/70-vpud.rules:") && l.contains("Invalid")),
        "{text}"
    );
}

#[test]
fn udev_binds_an_unbound_card_to_vfio_pci_and_tags_it() {
    let sys = FakeSystem::new();
    let dev = sys.pci("0000:00:04.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    let out = sys.udev("add", &dev);
    assert_eq!(
        sys.read_sys("devices/pci0000:00/0000:00:04.0/driver_override")
            .trim(),
        "vfio-pci"
    );
    assert!(out
        .property("TAGS")
        .is_some_and(|t| t.contains(":systemd:")));
    assert_eq!(out.runs.len(), 2, "{:?}", out.runs);
    assert_eq!(out.runs[0], "kmod load vfio-pci");
    assert_eq!(sys.read_sys("bus/pci/drivers_probe"), "0000:00:04.0\n");
}

#[test]
fn udev_takes_a_card_away_from_the_nvme_driver() {
    let sys = FakeSystem::new();
    let dev = sys.pci(
        "0000:00:05.0",
        VPU_VENDOR,
        VPU_DEVICE,
        NVME_CLASS,
        Some("nvme"),
    );
    sys.udev("add", &dev);
    assert_eq!(
        sys.read_sys("devices/pci0000:00/0000:00:05.0/driver_override")
            .trim(),
        "vfio-pci"
    );
    assert_eq!(
        sys.read_sys("bus/pci/drivers/nvme/unbind"),
        "0000:00:05.0\n"
    );
    assert_eq!(sys.read_sys("bus/pci/drivers_probe"), "0000:00:05.0\n");
}

#[test]
fn udev_leaves_a_card_already_on_vfio_pci_bound() {
    let sys = FakeSystem::new();
    let dev = sys.pci(
        "0000:00:06.0",
        VPU_VENDOR,
        VPU_DEVICE,
        NVME_CLASS,
        Some("vfio-pci"),
    );
    sys.udev("add", &dev);
    assert_eq!(sys.read_sys("bus/pci/drivers/vfio-pci/unbind"), "");

    // Other events (udevadm trigger's default "change") only keep the systemd tag.
    let out = sys.udev("change", &dev);
    assert!(out
        .property("TAGS")
        .is_some_and(|t| t.contains(":systemd:")));
    assert!(out.runs.is_empty(), "{:?}", out.runs);
}

#[test]
fn udev_touches_no_other_pci_device() {
    let sys = FakeSystem::new();
    let others = [
        // An NVMe SSD: same class, another vendor (Samsung).
        ("0000:01:00.0", "0x144d", "0xa808", NVME_CLASS, Some("nvme")),
        // The card's vendor and class, another device.
        ("0000:02:00.0", VPU_VENDOR, "0x5651", NVME_CLASS, None),
        // The card's IDs with another class.
        ("0000:03:00.0", VPU_VENDOR, VPU_DEVICE, "0x030000", None),
        // Another vendor's device ID equal to the card's.
        ("0000:04:00.0", "0x8086", VPU_DEVICE, NVME_CLASS, None),
    ];
    for (bdf, vendor, device, class, driver) in others {
        let dev = sys.pci(bdf, vendor, device, class, driver);
        for action in ["add", "change", "bind"] {
            let out = sys.udev(action, &dev);
            assert_eq!(
                sys.read_sys(&format!("devices/pci0000:00/{bdf}/driver_override"))
                    .trim(),
                "(null)",
                "{bdf} {vendor}:{device} {class}"
            );
            assert!(
                out.rule_lines().is_empty() && out.runs.is_empty(),
                "{bdf} {vendor}:{device} {class} {action}: {:?}",
                out.rule_lines()
            );
            assert!(!out.property("TAGS").is_some_and(|t| t.contains("systemd")));
        }
    }
    assert_eq!(sys.read_sys("bus/pci/drivers/nvme/unbind"), "");
    assert_eq!(sys.read_sys("bus/pci/drivers_probe"), "");
}

#[test]
fn udev_gives_a_cards_group_node_to_group_vpu_and_starts_vpud() {
    let sys = FakeSystem::new();
    sys.pci("0000:00:04.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    sys.pci("0000:00:05.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    // One card per group, and a group of two cards.
    for (n, members) in [
        (7, &["0000:00:04.0"][..]),
        (8, &["0000:00:04.0", "0000:00:05.0"][..]),
    ] {
        let dev = sys.vfio_group(n, members);
        let out = sys.udev("add", &dev);
        assert_eq!(sys.node(&format!("vfio/{n}")), ("vpu".to_owned(), 0o660));
        assert_eq!(out.property("SYSTEMD_WANTS"), Some("vpud.service"));
        assert!(out
            .property("TAGS")
            .is_some_and(|t| t.contains(":systemd:")));
    }
}

#[test]
fn udev_leaves_other_group_nodes_and_the_container_alone() {
    let sys = FakeSystem::new();
    sys.pci("0000:00:04.0", VPU_VENDOR, VPU_DEVICE, NVME_CLASS, None);
    sys.pci("0000:01:00.0", "0x144d", "0xa808", NVME_CLASS, None);
    sys.pci("0000:02:00.0", "0x8086", "0x1533", "0x020000", None);
    let cases = [
        // An NVMe SSD passed to a VM through VFIO.
        (9, &["0000:01:00.0"][..]),
        // A card sharing its IOMMU group with a NIC: the node would give the NIC away.
        (10, &["0000:00:04.0", "0000:02:00.0"][..]),
        // A group without devices.
        (11, &[][..]),
    ];
    for (n, members) in cases {
        let dev = sys.vfio_group(n, members);
        let out = sys.udev("add", &dev);
        assert_eq!(
            sys.node(&format!("vfio/{n}")),
            ("root".to_owned(), 0o600),
            "group {n} {members:?}"
        );
        assert_eq!(out.property("SYSTEMD_WANTS"), None, "group {n}");
    }
    let dev = sys.vfio_container();
    let out = sys.udev("add", &dev);
    assert_eq!(sys.node("vfio/vfio"), ("root".to_owned(), 0o666));
    assert!(out.rule_lines().is_empty(), "{:?}", out.rule_lines());
}

/// The IDs the rules list are the card's, as `vpu.h` defines them.
#[test]
fn udev_rules_use_the_ids_of_vpu_h() {
    let header = fs::read_to_string(workspace().join("ffi/include/vpu.h")).expect("vpu.h");
    for (name, value) in [
        ("VPU_PCI_VENDOR_ID", VPU_VENDOR),
        ("VPU_PCI_DEVICE_ID", VPU_DEVICE),
        ("VPU_PCI_CLASS_NVME", NVME_CLASS),
    ] {
        let line = header
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} in vpu.h"));
        assert!(line.ends_with(&format!("{value}u")), "{line} vs {value}");
    }
    let rules = fs::read_to_string(workspace().join("udev/70-vpud.rules")).expect("rules");
    assert!(rules.contains(&format!(
        "ATTR{{vendor}}==\"{VPU_VENDOR}\", ATTR{{device}}==\"{VPU_DEVICE}\", ATTR{{class}}==\"{NVME_CLASS}\""
    )));
}
