//! A real block device that can fail, for the promises that only a failing device tests: ext4
//! on a loop device whose backing file is sparse, on a tmpfs smaller than the file system. Writes
//! reach the page cache as usual; when the tmpfs is full, their write-back fails with EIO, as on a
//! thin-provisioned volume out of space. Filling the tmpfs at will turns that into a power cut:
//! whatever was not flushed before it never reaches the device.
//!
//! Needs root (mount, losetup), which CI has; without it the test fails loudly, never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Device {
    /// Where the ext4 file system is mounted.
    pub mount: PathBuf,
    /// The tmpfs holding the backing file.
    backing: PathBuf,
    loop_dev: String,
}

impl Device {
    /// Mount a `fs_mb` MB ext4 file system at `mount` (created), backed by a tmpfs of `room_mb` MB.
    pub fn new(mount: &Path, fs_mb: u32, room_mb: u32) -> Device {
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "a failing device needs root (mount, losetup): run the tests as root, as CI does"
        );
        let backing = mount.with_extension("backing");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(mount).unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={room_mb}m"), "tmpfs", path(&backing)]);
        let image = backing.join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(u64::from(fs_mb) << 20).unwrap();
        let loop_dev = output("losetup", &["--find", "--show", path(&image)]);
        let device = Device { mount: mount.to_path_buf(), backing, loop_dev };
        // Lazy initialisation: mkfs writes a few hundred KB, not the inode tables.
        run("mkfs.ext4", &["-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", &device.loop_dev]);
        device.mount_fs();
        device
    }

    /// The journal commits only when asked (`commit=300`, longer than any test): so what reaches
    /// the device is what someone flushed, and a failed write-back is first seen by a flush, not
    /// by the journal's own timer turning the file system read-only in between.
    fn mount_fs(&self) {
        run("mount", &["-t", "ext4", "-o", "commit=300", &self.loop_dev, path(&self.mount)]);
    }

    /// Leave the device no room: every write-back from now on fails.
    pub fn fill(&self) {
        // dd stops at ENOSPC and says so; the tmpfs is full then.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", self.backing.join("filler").display()), "bs=1M"])
            .output()
            .unwrap();
    }

    /// A power cut: the file system is unmounted with the device full, so everything not yet
    /// flushed is lost; then the device gets room again and the file system is mounted (its
    /// journal replayed), as after a reboot.
    pub fn power_cut(&self) {
        self.fill();
        run("umount", &[path(&self.mount)]);
        std::fs::remove_file(self.backing.join("filler")).unwrap();
        self.grow();
        self.mount_fs();
    }

    /// The device given room again and the file system mounted anew, as after a repair and a
    /// restart. Room comes first. Unmounting on the still-full device once lost an acknowledged
    /// file in about ten runs on a loaded machine, and whether the kernel or the node lost it was
    /// not found out; the once-only error report the node must not trust is proven by
    /// `durability`'s own unit test.
    pub fn repair(&self) {
        let _ = std::fs::remove_file(self.backing.join("filler"));
        self.grow();
        run("umount", &[path(&self.mount)]);
        self.mount_fs();
    }

    fn grow(&self) {
        run("mount", &["-o", "remount,size=2g", path(&self.backing)]);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.loop_dev]).status();
        let _ = Command::new("umount").arg("-l").arg(&self.backing).status();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

fn run(cmd: &str, args: &[&str]) {
    output(cmd, args);
}

fn output(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
