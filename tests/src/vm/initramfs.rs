//! The guest's initramfs: a `newc` cpio archive written here (no `cpio` tool needed) with
//! busybox, the init script, the guest program with the shared objects it loads, and the
//! vfio modules in load order.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::Prerequisites;

/// The modules the guest loads, with their dependencies resolved from `modules.dep`.
const GUEST_MODULES: &[&str] = &["vfio_iommu_type1", "vfio_pci"];

/// A `newc` cpio archive, written entry by entry.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let mut h = String::from("070701");
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        for f in fields {
            let _ = write!(h, "{f:08x}");
        }
        self.ino += 1;
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Module files to load, dependencies first, resolved from `modules.dep`.
fn module_order(modules: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let table: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let stem = |p: &str| {
        let file = p.rsplit('/').next().unwrap_or(p);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    fn visit(
        m: &str,
        table: &[(String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if order.iter().any(|o| o == m) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependency loop at {m}");
        }
        let deps = table
            .iter()
            .find(|(p, _)| p == m)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for d in deps.iter().rev() {
            visit(d, table, order, depth + 1)?;
        }
        order.push(m.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for want in GUEST_MODULES {
        let path = table
            .iter()
            .find(|(p, _)| stem(p) == *want)
            .map(|(p, _)| p.clone())
            .with_context(|| format!("module {want} not in modules.dep"))?;
        visit(&path, &table, &mut order, 0)?;
    }
    Ok(order.into_iter().map(|p| modules.join(p)).collect())
}

/// Reads a module, decompressing `.ko.xz`/`.ko.zst` with the host's tools (busybox's
/// insmod takes plain `.ko` files).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("reading {name}")),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-dc"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} for {name}"))?;
            if !out.status.success() {
                bail!("{tool} -dc {name} failed");
            }
            Ok(out.stdout)
        }
    }
}

/// The guest program without its debug sections (`objcopy --strip-debug`, binutils): the
/// test build keeps line tables, which would only make the archive several times larger.
/// Unstripped when objcopy is missing or fails.
fn read_program(path: &Path, work: &Path) -> anyhow::Result<Vec<u8>> {
    let stripped = work.join("vfio-guest.stripped");
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(path)
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    let from = if ok { stripped.as_path() } else { path };
    std::fs::read(from).with_context(|| format!("reading {}", from.display()))
}

/// Writes the initramfs: busybox, `init`, the guest program and each of its shared
/// objects at the absolute path it has on the host (`libs`, from
/// [`shared_libraries`](super::shared_libraries)), the vfio modules. `out`'s directory
/// holds intermediate files.
pub fn build_initramfs(
    pre: &Prerequisites,
    init: &Path,
    guest: &Path,
    libs: &[PathBuf],
    out: &Path,
) -> anyhow::Result<()> {
    let mut cpio = Cpio::new();
    let mut dirs: Vec<String> = ["bin", "dev", "proc", "sys", "tmp", "modules"]
        .map(str::to_owned)
        .to_vec();
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        for dir in rel.ancestors().skip(1) {
            let dir = dir.to_string_lossy().into_owned();
            if !dir.is_empty() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    // Parents before children.
    dirs.sort_by_key(|d| d.matches('/').count());
    for d in &dirs {
        cpio.dir(d);
    }
    // The console must exist before devtmpfs is mounted, for init's stdout.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &std::fs::read(&pre.busybox)?);
    cpio.file("init", 0o755, &std::fs::read(init)?);
    let work = out.parent().unwrap_or(Path::new("."));
    cpio.file("vfio-guest", 0o755, &read_program(guest, work)?);
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib).to_string_lossy();
        let data = std::fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
        cpio.file(&rel, 0o755, &data);
    }
    let mut order = String::new();
    for m in module_order(&pre.modules)? {
        let file = m
            .file_name()
            .context("module path")?
            .to_string_lossy()
            .replace(".xz", "")
            .replace(".zst", "");
        cpio.file(&format!("modules/{file}"), 0o644, &read_module(&m)?);
        order.push_str(&file);
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    std::fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
