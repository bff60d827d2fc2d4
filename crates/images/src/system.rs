//! The images the node itself needs, made of nothing but a static busybox.

use std::path::Path;
use std::process::Command;

use crate::{Error, ImageBuilder, Result};

/// Where busybox lives in our images; applets link to it by this absolute path.
const BUSYBOX_IN_IMAGE: &str = "/bin/busybox";

/// The sandbox's process. A container's PID 1 gets no default signal actions, so without a trap
/// SIGTERM would be ignored and every pod stop would wait out the grace period for SIGKILL.
/// `wait` returns as soon as a trapped signal arrives, and busybox ash's `wait` reaps any child,
/// so orphans re-parented to the sandbox (shared PID namespace) do not linger as zombies either.
/// `sleep` is spelled out as a busybox applet because the pause image has no applet links.
pub(crate) const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 3600 & wait $!; done";

/// The busybox image: `/bin/busybox`, a link for every applet at its usual place (`/bin/sh`,
/// `/usr/bin/env`, ...), `/etc/passwd` and `/etc/group` with root and nobody (65534), `/tmp`,
/// `/root` and `/var/www`. Runs `sh` by default.
pub fn busybox_image(reference: &str, busybox: &Path) -> Result<ImageBuilder> {
    check_static(busybox)?;
    let applets = applet_paths(busybox)?;
    let mut image = ImageBuilder::new(reference)?;
    image.file_from_host(busybox, BUSYBOX_IN_IMAGE, 0o755)?;
    for applet in applets {
        if applet != BUSYBOX_IN_IMAGE {
            image.symlink(&applet, BUSYBOX_IN_IMAGE)?;
        }
    }
    image
        .dir("/tmp", 0o1777)?
        .dir("/root", 0o700)?
        .dir("/var/www", 0o755)?
        .file_bytes("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", "/etc/passwd", 0o644)?
        .file_bytes("root:x:0:\nnobody:x:65534:\n", "/etc/group", 0o644)?;
    image.cmd(["sh"]);
    Ok(image)
}

/// The pod sandbox image: busybox alone, sleeping until SIGTERM or SIGINT, as nobody.
pub fn pause_image(reference: &str, busybox: &Path) -> Result<ImageBuilder> {
    check_static(busybox)?;
    let mut image = ImageBuilder::new(reference)?;
    image.file_from_host(busybox, BUSYBOX_IN_IMAGE, 0o755)?;
    // Numeric, because the image has no /etc/passwd to look a name up in.
    image.user("65534:65534").entrypoint([BUSYBOX_IN_IMAGE, "sh", "-c", PAUSE_SCRIPT]);
    Ok(image)
}

/// Absolute applet paths, from `busybox --list-full` (e.g. `usr/bin/env`), or every applet in
/// /bin for a busybox built without that option.
fn applet_paths(busybox: &Path) -> Result<Vec<String>> {
    if let Ok(full) = run_busybox(busybox, "--list-full") {
        return Ok(full.lines().filter(|line| !line.is_empty()).map(|line| format!("/{}", line.trim_start_matches('/'))).collect());
    }
    let short = run_busybox(busybox, "--list")?;
    Ok(short.lines().filter(|line| !line.is_empty()).map(|name| format!("/bin/{name}")).collect())
}

fn run_busybox(busybox: &Path, flag: &str) -> Result<String> {
    let program = busybox.display().to_string();
    let output = Command::new(busybox).arg(flag).output().map_err(|source| Error::Spawn { program: program.clone(), source })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command: format!("{program} {flag}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| Error::CommandFailed {
        command: format!("{program} {flag}"),
        status: output.status,
        stderr: "output is not UTF-8".into(),
    })
}

/// Refuses a dynamically linked binary: it would find no libc in an image holding only itself.
/// An ELF executable is dynamically linked when it names a program interpreter (PT_INTERP).
pub(crate) fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    match interpreter_segment(&bytes) {
        Ok(false) => Ok(()),
        Ok(true) => Err(Error::NotStatic { path: path.to_path_buf(), reason: "it is dynamically linked".into() }),
        Err(reason) => Err(Error::NotStatic { path: path.to_path_buf(), reason: reason.into() }),
    }
}

/// Whether the ELF file has a PT_INTERP program header.
fn interpreter_segment(elf: &[u8]) -> Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file");
    }
    let little = match elf.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err("unknown ELF byte order"),
    };
    let number = |offset: usize, width: usize| -> Result<u64, &'static str> {
        let field = elf.get(offset..offset + width).ok_or("truncated ELF file")?;
        let fold = |acc: u64, byte: &u8| (acc << 8) | u64::from(*byte);
        Ok(if little { field.iter().rev().fold(0, fold) } else { field.iter().fold(0, fold) })
    };
    let (phoff, phentsize, phnum) = match elf.get(4) {
        Some(1) => (number(0x1c, 4)?, number(0x2a, 2)?, number(0x2c, 2)?),
        Some(2) => (number(0x20, 8)?, number(0x36, 2)?, number(0x38, 2)?),
        _ => return Err("unknown ELF class"),
    };
    for index in 0..phnum {
        let offset = index.checked_mul(phentsize).and_then(|relative| relative.checked_add(phoff)).and_then(|offset| usize::try_from(offset).ok());
        let offset = offset.ok_or("program header out of range")?;
        if number(offset, 4)? == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_refused() {
        // Test binaries link against glibc dynamically on the gnu targets we build for.
        if cfg!(target_env = "gnu") {
            let this = std::env::current_exe().unwrap();
            assert!(matches!(check_static(&this), Err(Error::NotStatic { .. })));
        }
        assert_eq!(interpreter_segment(b"#!/bin/sh\n"), Err("not an ELF file"));
        assert_eq!(interpreter_segment(b"\x7fELF\x02\x01"), Err("truncated ELF file"));
    }

    #[test]
    fn program_headers_are_read_in_both_classes() {
        // A 64-bit little-endian header with one program header of the given type at 0x40.
        let elf64 = |p_type: u32| {
            let mut elf = vec![0u8; 0x40 + 56];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            elf[0x20] = 0x40;
            elf[0x36] = 56;
            elf[0x38] = 1;
            elf[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
            elf
        };
        assert_eq!(interpreter_segment(&elf64(3)), Ok(true));
        assert_eq!(interpreter_segment(&elf64(1)), Ok(false));
        // 32-bit big-endian, program header at 0x34.
        let mut elf32 = vec![0u8; 0x34 + 32];
        elf32[..6].copy_from_slice(b"\x7fELF\x01\x02");
        elf32[0x1f] = 0x34;
        elf32[0x2b] = 32;
        elf32[0x2d] = 1;
        elf32[0x34..0x38].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(interpreter_segment(&elf32), Ok(true));
    }
}
