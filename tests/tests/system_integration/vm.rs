//! vpud under its own hardened unit, in a VM that boots systemd.
//!
//! The VM's root file system is built from the host's Debian packages (systemd, dbus,
//! coreutils, util-linux and the libraries they and vpud load) plus everything the install
//! command installs, packed into an initramfs that systemd runs from. At boot
//! `systemd-sysusers` creates the users from the shipped sysusers file; a check service then
//! starts `vpud.service` as shipped (configured for two emulated cards, the watchdog period
//! shortened by a drop-in so that a missing ping would show within the test), and, as a
//! member of `vpu` on the system bus, runs `vpuctl status` and encodes a clip with
//! `vpuctl encode`; a user outside `vpu` is refused. Stopped, vpud is started again by D-Bus
//! activation when a client calls it. It reports on the serial console, which the test reads.
//!
//! The VM also has an IOMMU and QEMU's NVMe controller (an NVMe drive, not a card): udev, with
//! our rules among Debian's, must leave it alone; bound to `vfio-pci` by hand and its group
//! node given to `vpu` as the rules do for cards, vpud must open it through VFIO under its
//! unit, bring the controller up, read Identify by DMA and skip it as a plain drive.
//!
//! This is the check that no directive of the unit breaks vpud's real work: the system-call
//! filter, the private /dev with /dev/vfio bound in, the device allow-list, the read-only
//! file system, the missing capabilities, the memory-lock limit and the address-family
//! restrictions are all in force while vpud drives a device and serves sessions.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{check, install, require_root, run, TempDir};

/// Debian packages whose files make up the VM (besides the libraries found with `ldd`).
const PACKAGES: &[&str] = &[
    "systemd",
    "libsystemd-shared",
    "libsystemd0",
    "dbus",
    "dbus-daemon",
    "dbus-bin",
    "dbus-system-bus-common",
    "libdbus-1-3",
    "dash",
    "coreutils",
    "util-linux",
    "mount",
    "sed",
    "grep",
    "kmod",
    "udev",
];

/// The test's part of the VM: users, vpud's configuration, the watchdog drop-in, and the
/// check service that powers the VM off when done.
const FILES: &[(&str, &str)] = &[
    (
        "etc/sysusers.d/vpud-test.conf",
        "u vpu-test-member - \"vpud test user in group vpu\" /nonexistent\n\
         m vpu-test-member vpu\n\
         u vpu-test-outsider - \"vpud test user outside group vpu\" /nonexistent\n",
    ),
    ("etc/vpud/vpud.toml", "[emulated]\ncount = 2\n"),
    (
        "etc/systemd/system/vpud.service.d/50-test-watchdog.conf",
        "[Service]\nWatchdogSec=4s\n",
    ),
    (
        "etc/systemd/system/vm-check.target",
        "[Unit]\nDescription=vpud VM check\nWants=vm-check.service\nAfter=vm-check.service\n",
    ),
    (
        "etc/systemd/system/vm-check.service",
        "[Unit]\nDescription=vpud VM check script\nWants=dbus.socket\n\
         After=dbus.socket basic.target systemd-sysusers.service\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/bin/vm-check\n\
         StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/ttyS0\n\
         ExecStopPost=/usr/bin/systemctl poweroff --no-block\n",
    ),
    ("usr/local/bin/vm-check", CHECK_SCRIPT),
];

/// Runs in the VM; every finding is a `VM-RESULT key=value` line.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
r() { echo "VM-RESULT $1=$2"; }
as_user() { u=$1; shift; setpriv --reuid "$u" --regid "$u" --init-groups -- "$@"; }
field() { sed -n "s/^$1:[[:space:]]*//p" "/proc/$2/status"; }

# QEMU's NVMe controller (1b36:0010): an NVMe drive, not a card. udev (our rules among
# Debian's) must have left it to the nvme driver.
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1b36:0x0010 ] && nvme=${d##*/}
done
r nvme_found "${nvme:+yes}"
dev=/sys/bus/pci/devices/$nvme
r nvme_driver_at_boot "$(basename "$(readlink "$dev/driver")")"
r nvme_override_at_boot "$(cat "$dev/driver_override")"
# An operator binds it to vfio-pci (as for a VM); its group node must stay root's.
modprobe vfio-pci; r modprobe $?
echo vfio-pci > "$dev/driver_override"
echo "$nvme" > "$dev/driver/unbind"
echo "$nvme" > /sys/bus/pci/drivers_probe
udevadm settle
group=$(basename "$(readlink "$dev/iommu_group")")
r nvme_driver_bound "$(basename "$(readlink "$dev/driver")")"
r group_node "$(stat -c '%G %a' "/dev/vfio/$group")"
r group_wants "$(udevadm info -q property "/dev/vfio/$group" | grep -c SYSTEMD_WANTS)"
# Given to group vpu as the rules do for a card, vpud opens it through VFIO under its unit,
# brings the controller up, reads Identify over DMA and finds no VPU block.
chgrp vpu "/dev/vfio/$group"; chmod 0660 "/dev/vfio/$group"

systemctl start vpud.service; r start $?
pid=$(systemctl show -P MainPID vpud.service)
r active "$(systemctl is-active vpud.service)"
r uid "$(field Uid "$pid" | cut -f1)"
r vpud_uid "$(id -u vpud)"
r cap_eff "$(field CapEff "$pid")"
r cap_bnd "$(field CapBnd "$pid")"
r no_new_privs "$(field NoNewPrivs "$pid")"
r seccomp "$(field Seccomp "$pid")"
r vfio_not_a_vpu "$(journalctl -b -u vpud.service -o cat | grep "device=$nvme" | grep -c 'without a VPU block')"
r vfio_open_failed "$(journalctl -b -u vpud.service -o cat | grep -c -e 'cannot open function' -e 'bringing up function failed')"
r groups_has_vpu "$(field Groups "$pid" | tr ' ' '\n' | grep -cx "$(grep '^vpu:' /etc/group | cut -d: -f3)")"

as_user vpu-test-member vpuctl status > /tmp/status 2>&1; r member_status $?
sed 's/^/VM-LOG status: /' /tmp/status
as_user vpu-test-outsider vpuctl status > /tmp/outsider 2>&1; r outsider_status $?
r outsider_denied "$(grep -c AccessDenied /tmp/outsider)"

as_user vpu-test-member vpuctl encode /usr/local/share/clip.yuv --size 320x240 -o /tmp/out.h264 \
    > /tmp/encode 2>&1
r encode $?
sed 's/^/VM-LOG encode: /' /tmp/encode
r annexb "$(head -c 4 /tmp/out.h264 | od -An -tx1 | tr -d ' \n')"
r encoded_bytes "$(stat -c %s /tmp/out.h264)"

# Several watchdog periods: without pings systemd would have killed and restarted vpud.
sleep 10
r active_later "$(systemctl is-active vpud.service)"
r same_pid "$([ "$(systemctl show -P MainPID vpud.service)" = "$pid" ] && echo yes || echo no)"
r restarts "$(systemctl show -P NRestarts vpud.service)"
systemctl stop vpud.service; r stop $?
r result "$(systemctl show -P Result vpud.service)"
# D-Bus activation: a client's call starts vpud.service again.
as_user vpu-test-member busctl --system call org.vpud.Vpud1 /org/vpud/Vpud1 \
    org.freedesktop.DBus.Peer Ping > /tmp/activated 2>&1
r activated_status $?
sed 's/^/VM-LOG activation: /' /tmp/activated
r activated "$(systemctl is-active vpud.service)"
journalctl -b -u vpud.service --no-pager -o cat | tail -40 | sed 's/^/VM-LOG journal: /'
echo VM-DONE
"#;

/// Copies the host file `path` (resolving symlinks) into `root` at its resolved place, and
/// keeps `path`'s own name (merged-/usr spelling) as a symlink to it. Returns whether the
/// file was new.
fn copy_resolved(root: &Path, path: &Path) -> bool {
    let Ok(src) = fs::canonicalize(path) else {
        return false;
    };
    if !src.is_file() {
        return false;
    }
    let dst = root.join(src.strip_prefix("/").expect("absolute"));
    let new = !dst.exists();
    if new {
        fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
    let name = path.to_str().expect("utf-8 path");
    let name = match ["/lib/", "/lib64/", "/bin/", "/sbin/"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        true => format!("/usr{name}"),
        false => name.to_owned(),
    };
    let link = root.join(&name[1..]);
    if Path::new(&name) != src && fs::symlink_metadata(&link).is_err() {
        fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        symlink(&src, &link).expect("symlink");
    }
    new
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let ty = entry.file_type().expect("file type");
        if ty.is_dir() {
            files_under(&entry.path(), out);
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
}

/// Builds the VM's root file system in `root`.
fn build_root(root: &Path) {
    for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link)).expect("usr-merge symlink");
    }
    for package in PACKAGES {
        let list = check(Command::new("dpkg").args(["-L", package]));
        for path in list.lines().map(Path::new).filter(|p| p.is_file()) {
            copy_resolved(root, path);
        }
    }
    // vpud and vpuctl, and every file the install command places. Debug info is dropped
    // to keep the initramfs small.
    let out = install(root, &["--no-reload"]);
    assert!(out.status.success(), "install failed: {out:?}");
    for bin in ["usr/bin/vpud", "usr/bin/vpuctl"] {
        check(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(root.join(bin)),
        );
    }
    // The libraries everything loads, to a fixed point.
    loop {
        let mut files = Vec::new();
        files_under(&root.join("usr"), &mut files);
        let mut libs = std::collections::BTreeSet::new();
        for file in files.iter().filter(|f| is_elf(f)) {
            let out = run(Command::new("ldd").arg(file));
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let lib = match line.split_once("=> ") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                    libs.insert(PathBuf::from(lib));
                }
            }
        }
        let mut new = 0;
        for lib in &libs {
            new += usize::from(copy_resolved(root, lib));
        }
        if new == 0 {
            break;
        }
    }
    // The vfio modules of the VM's kernel, with the module index.
    let modules = Path::new("/lib/modules").join(kernel_version());
    let mut module_files = Vec::new();
    for dir in ["kernel/drivers/vfio", "kernel/virt/lib"] {
        files_under(&modules.join(dir), &mut module_files);
    }
    for entry in fs::read_dir(&modules).expect("modules dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            module_files.push(path);
        }
    }
    for file in module_files {
        let dst = root
            .join("usr")
            .join(file.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        fs::copy(&file, &dst).expect("copy module");
    }
    for dir in [
        "proc", "sys", "dev", "run", "var/tmp", "var/lib", "root", "etc",
    ] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    fs::create_dir_all(root.join("tmp")).expect("mkdir tmp");
    check(Command::new("chmod").arg("1777").arg(root.join("tmp")));
    check(
        Command::new("mknod")
            .args(["-m", "600"])
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"]),
    );
    for (path, text) in [
        ("etc/machine-id", ""),
        ("etc/os-release", "ID=debian\nNAME=\"vpud test VM\"\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        fs::write(root.join(path), text).expect("write etc");
    }
    for (path, text) in FILES {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, text).expect("write test file");
    }
    check(
        Command::new("chmod")
            .arg("755")
            .arg(root.join("usr/local/bin/vm-check")),
    );
    fs::create_dir_all(root.join("usr/local/share")).expect("mkdir");
    fs::write(root.join("usr/local/share/clip.yuv"), clip()).expect("write clip");
}

/// 30 frames of raw I420 at 320x240: a diagonal gradient moving 4 pixels a frame.
fn clip() -> Vec<u8> {
    let (w, h) = (320usize, 240usize);
    let mut data = Vec::with_capacity(w * h * 3 / 2 * 30);
    for t in 0..30 {
        for y in 0..h {
            // Truncation to u8 is the pattern: it wraps around every 256 values.
            data.extend((0..w).map(|x| ((x + y + 4 * t) % 256) as u8));
        }
        data.resize(data.len() + w * h / 2, 128);
    }
    data
}

/// The kernel of Debian's `linux-image-cloud-amd64`.
fn kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("/boot")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("a kernel in /boot (package linux-image-cloud-amd64)")
}

/// The version of [`kernel`], whose modules are in /lib/modules/VERSION.
fn kernel_version() -> String {
    let kernel = kernel();
    let name = kernel.file_name().expect("name").to_string_lossy();
    name.strip_prefix("vmlinuz-")
        .expect("vmlinuz-VERSION")
        .to_owned()
}

/// Boots the VM and returns its `VM-RESULT`s and the whole console.
fn boot(tmp: &TempDir) -> (BTreeMap<String, String>, String) {
    let root = tmp.path().join("root");
    build_root(&root);
    let cpio = tmp.path().join("root.cpio");
    check(
        Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . | cpio -o -H newc --quiet > \"$2\"")
            .arg("sh")
            .arg(&root)
            .arg(&cpio),
    );
    let console = tmp.path().join("console.log");
    let drive = tmp.path().join("nvme.raw");
    fs::File::create(&drive)
        .and_then(|f| f.set_len(1 << 20))
        .expect("NVMe backing file");
    let out = run(Command::new("timeout")
        .arg(Duration::from_secs(600).as_secs().to_string())
        .args(["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg"])
        .args(["-m", "1024", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=nvme0,format=raw", drive.display()))
        .args(["-device", "nvme,drive=nvme0,serial=vpudtest"])
        .arg("-kernel")
        .arg(kernel())
        .arg("-initrd")
        .arg(&cpio)
        .args([
            "-append",
            "intel_iommu=on console=ttyS0 rdinit=/usr/lib/systemd/systemd systemd.unit=vm-check.target \
             panic=-1 no_timer_check quiet",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-no-reboot"));
    let text = fs::read_to_string(&console).unwrap_or_default();
    assert!(
        out.status.success() && text.contains("VM-DONE"),
        "the VM did not finish its checks ({out:?}):\n{text}"
    );
    let results = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VM-RESULT ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    (results, text)
}

#[test]
fn vpud_serves_sessions_under_its_hardened_unit() {
    require_root();
    let tmp = TempDir::new("vm");
    let (results, console) = boot(&tmp);
    let get = |key: &str| results.get(key).map(String::as_str).unwrap_or("<missing>");
    let expect = |key: &str, value: &str| {
        assert_eq!(get(key), value, "VM-RESULT {key}:\n{console}");
    };
    // Real udev with our rules left the NVMe drive alone, and its VFIO group node too.
    expect("nvme_found", "yes");
    expect("nvme_driver_at_boot", "nvme");
    expect("nvme_override_at_boot", "(null)");
    expect("modprobe", "0");
    expect("nvme_driver_bound", "vfio-pci");
    expect("group_node", "root 600");
    expect("group_wants", "0");
    expect("start", "0");
    // VFIO under the unit: vpud opened the function, brought the controller up, read
    // Identify, and skipped it as a plain drive.
    expect("vfio_not_a_vpu", "1");
    expect("vfio_open_failed", "0");
    expect("active", "active");
    // Confinement in force: user vpud (in vpu), no capabilities, no new privileges, a
    // seccomp filter.
    assert_eq!(get("uid"), get("vpud_uid"), "{console}");
    assert_ne!(get("uid"), "0", "{console}");
    expect("groups_has_vpu", "1");
    expect("cap_eff", "0000000000000000");
    expect("cap_bnd", "0000000000000000");
    expect("no_new_privs", "1");
    expect("seccomp", "2");
    // Served on the system bus to a member of vpu, refused to others.
    expect("member_status", "0");
    assert_ne!(get("outsider_status"), "0", "{console}");
    assert_ne!(get("outsider_denied"), "0", "{console}");
    // A session encoded a clip: Annex-B H.264 came back.
    expect("encode", "0");
    expect("annexb", "00000001");
    let bytes: u64 = get("encoded_bytes").parse().unwrap_or(0);
    assert!(bytes > 100, "{bytes} bytes encoded:\n{console}");
    // Watchdog pings arrived: no restart over several periods.
    expect("active_later", "active");
    expect("same_pid", "yes");
    expect("restarts", "0");
    expect("stop", "0");
    expect("result", "success");
    expect("activated_status", "0");
    expect("activated", "active");
}
