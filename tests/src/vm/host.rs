//! What the tier needs from the host (QEMU, a Debian kernel with its vfio modules, a
//! static busybox) and the shared objects the guest program needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// What the tier needs from the host.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    pub qemu: PathBuf,
    /// `vmlinuz` of a Debian amd64 kernel.
    pub kernel: PathBuf,
    /// `/lib/modules/<version>` of the same kernel.
    pub modules: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

/// How to get what is missing, for the skip message.
pub const HOW_TO_ENABLE: &str = "install the VM tier's packages: \
    `apt-get install qemu-system-x86 linux-image-cloud-amd64 busybox-static` \
    (or point VPU_VM_QEMU at qemu-system-x86_64, VPU_VM_KERNEL at a vmlinuz and \
    VPU_VM_MODULES at its /lib/modules/<version>)";

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub(super) fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    let data = std::fs::read(path)?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let phoff = u64_at(0x20).context("ELF header")? as usize;
    let phentsize = usize::from(u16_at(0x36).context("ELF header")?);
    let phnum = usize::from(u16_at(0x38).context("ELF header")?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize) == Some(PT_INTERP) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn has_vfio_modules(modules: &Path) -> bool {
    modules.join("modules.dep").is_file() && modules.join("kernel/drivers/vfio").is_dir()
}

/// Finds a kernel and its modules: `VPU_VM_KERNEL`/`VPU_VM_MODULES`, an installed
/// `/boot/vmlinuz-*` (cloud flavour first), or a `linux-image-*amd64` package in apt's
/// cache unpacked with `dpkg-deb -x` into `work`.
fn find_kernel(work: &Path) -> Result<(PathBuf, PathBuf), String> {
    if let (Some(k), Some(m)) = (
        std::env::var_os("VPU_VM_KERNEL"),
        std::env::var_os("VPU_VM_MODULES"),
    ) {
        return Ok((k.into(), m.into()));
    }
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    versions.sort_by_key(|v| (!v.contains("cloud"), v.clone()));
    for v in versions {
        let kernel = PathBuf::from(format!("/boot/vmlinuz-{v}"));
        let modules = PathBuf::from(format!("/lib/modules/{v}"));
        if has_vfio_modules(&modules) && std::fs::File::open(&kernel).is_ok() {
            return Ok((kernel, modules));
        }
    }
    let debs: Vec<PathBuf> = std::fs::read_dir("/var/cache/apt/archives")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("linux-image-")
                    && n.ends_with(".deb")
                    && n.contains("amd64")
                    && !n.contains("-dbg")
            })
        })
        .collect();
    for deb in debs {
        let dir = work.join("kernel-pkg");
        let _ = std::fs::remove_dir_all(&dir);
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            continue;
        }
        let boot = std::fs::read_dir(dir.join("boot"))
            .into_iter()
            .flatten()
            .flatten();
        for e in boot {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                let modules = dir.join("lib/modules").join(v);
                if has_vfio_modules(&modules) {
                    return Ok((e.path(), modules));
                }
            }
        }
    }
    Err(format!(
        "no readable Debian amd64 kernel with vfio modules found; {HOW_TO_ENABLE}"
    ))
}

impl Prerequisites {
    /// Finds everything, or says what is missing and how to get it.
    pub fn find(work: &Path) -> Result<Self, String> {
        let qemu = match std::env::var_os("VPU_VM_QEMU") {
            Some(q) => Some(PathBuf::from(q)).filter(|q| q.is_file()),
            None => in_path("qemu-system-x86_64"),
        }
        .ok_or_else(|| format!("qemu-system-x86_64 not found; {HOW_TO_ENABLE}"))?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_static_elf(p).unwrap_or(false))
            .ok_or_else(|| format!("no statically linked busybox; {HOW_TO_ENABLE}"))?;
        let (kernel, modules) = find_kernel(work)?;
        Ok(Self {
            qemu,
            kernel,
            modules,
            busybox,
        })
    }
}

/// The shared objects a dynamically linked program loads, as `ldd` resolves them on this
/// host: the program interpreter (`/lib64/ld-linux-x86-64.so.2`) and every library, each
/// by the absolute path the guest's loader will look for. The guest runs the host's own
/// kernel-independent userland, so the host's glibc is the right one to carry.
pub fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .stderr(Stdio::inherit())
        .output()
        .context("running ldd (Debian's libc-bin) on the guest program")?;
    if !out.status.success() {
        bail!("ldd {} failed ({})", program.display(), out.status);
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

/// The paths in `ldd`'s output: `name => /path (0x…)`, `/path (0x…)` for the interpreter;
/// the vDSO (`linux-vdso.so.1 (0x…)`) has no file and is skipped.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("the guest program needs a library this host lacks: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!("ldd named no program interpreter:\n{text}");
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_interpreter() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5e1f4000)\n\
            \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f0a2c800000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a2c400000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a2cc9d000)\n";
        let libs = parse_ldd(text).expect("parsed");
        let names: Vec<_> = libs
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn a_missing_library_or_a_static_program_is_an_error() {
        let missing = "\tlibfoo.so.1 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n";
        assert!(parse_ldd(missing).is_err());
        assert!(parse_ldd("\tnot a dynamic executable\n").is_err());
    }
}
