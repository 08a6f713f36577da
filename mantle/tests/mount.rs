//! `mantle mount` end to end: a real FUSE mount (a `mantle mount --foreground` child process)
//! checked against the kernel's own tmpfs, operation by operation; durability across `kill -9`;
//! open-but-unlinked files; concurrent writers.
//!
//! These tests need `/dev/fuse` and root (or `fusermount3`); `.ci/run` installs `fuse3`.

#![allow(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use proptest::prelude::*;

/// A mounted namespace: the mount process, unmounted (SIGTERM, then a lazy unmount if it
/// did not go) when dropped.
struct Mounted {
    child: Option<Child>,
    at: PathBuf,
}

impl Mounted {
    fn start(data: &Path, at: &Path, extra: &[&str]) -> Mounted {
        std::fs::create_dir_all(at).expect("mountpoint");
        let mut child = common::mantle_bin()
            .args([
                "mount",
                "--foreground",
                "--data-capacity-mib",
                "256",
                "--data",
            ])
            .arg(data)
            .arg(at)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mantle mount");
        let out = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            let line = lines
                .next()
                .expect("mantle mount exited before it mounted")
                .expect("read stdout");
            if line.starts_with("mantle mount: mounted") {
                break;
            }
        }
        Mounted {
            child: Some(child),
            at: at.to_path_buf(),
        }
    }

    /// SIGKILL: the kernel's side stays until it is unmounted.
    fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_unmount(&self.at);
    }

    /// `fusermount3 -u` from outside, and waits for the mount process's clean exit.
    fn unmount_from_outside(mut self) {
        let status = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.at)
            .status()
            .expect("fusermount3");
        assert!(status.success(), "fusermount3 -u: {status}");
        if let Some(mut c) = self.child.take() {
            let status = c.wait().expect("wait for the mount");
            assert!(status.success(), "the mount exited with {status}");
        }
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid reads no memory of ours.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().expect("wait for the mount");
            assert!(status.success(), "the mount exited with {status}");
        }
    }
}

fn lazy_unmount(at: &Path) {
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(at)
        .stderr(Stdio::null())
        .status();
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
            lazy_unmount(&self.at);
        }
    }
}

/// A scratch directory on tmpfs (the kernel's own file system, the reference).
fn tmpfs_dir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    if base.is_dir() {
        tempfile::tempdir_in(base).expect("tempdir on /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (f, t) = (c(from), c(to));
    // SAFETY: both are NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

const NAMES: [&str; 4] = ["a", "b", "d/a", "d/e"];

#[derive(Clone, Debug)]
enum Step {
    Mkdir(usize),
    Rmdir(usize),
    Write {
        at: usize,
        offset: u64,
        len: usize,
        byte: u8,
        append: bool,
    },
    Create {
        at: usize,
        excl: bool,
        trunc: bool,
    },
    Truncate {
        at: usize,
        size: u64,
    },
    Unlink(usize),
    Rename {
        from: usize,
        to: usize,
        flags: u32,
    },
    Link {
        from: usize,
        to: usize,
    },
    Symlink {
        at: usize,
        target: usize,
    },
    Chmod {
        at: usize,
        mode: u32,
    },
    /// To one of [`WHO`]'s users and groups.
    Chown {
        at: usize,
        who: usize,
    },
    Read(usize),
}

/// The users the several-users test runs steps as: (uid, gid, supplementary groups). The
/// third is also in the second's group.
const WHO: [(u32, u32, &[u32]); 3] = [
    (0, 0, &[0]),
    (65534, 65534, &[65534]),
    (65533, 65533, &[65533, 65534]),
];

/// Makes this thread act as `WHO[who]` in file system calls (`setfsuid`, `setfsgid` and a
/// raw `setgroups`, which changes only the calling thread: glibc's would change every thread
/// of the process); back to root when dropped. A non-zero fsuid also drops the capabilities
/// that override permissions, so the kernel checks this thread as that user, on tmpfs and on
/// the mount alike (FUSE sends the fsuid and fsgid; the mount reads the groups from
/// /proc/TID/status).
struct ActAs;

impl ActAs {
    fn new(who: usize) -> ActAs {
        let (uid, gid, groups) = WHO[who];
        set_ids(uid, gid, groups);
        ActAs
    }
}

impl Drop for ActAs {
    fn drop(&mut self) {
        set_ids(0, 0, &[0]);
    }
}

fn set_ids(uid: u32, gid: u32, groups: &[u32]) {
    // SAFETY: the calls read only `groups`, which outlives them; they change this thread's
    // credentials, which is their point.
    unsafe {
        libc::setfsuid(0);
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
            0,
            "setgroups"
        );
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
}

fn step() -> impl Strategy<Value = Step> {
    let at = 0..NAMES.len();
    prop_oneof![
        1 => at.clone().prop_map(Step::Mkdir),
        1 => at.clone().prop_map(Step::Rmdir),
        4 => (at.clone(), 0u64..300_000, 1usize..200_000, any::<u8>(), any::<bool>())
            .prop_map(|(at, offset, len, byte, append)| Step::Write { at, offset, len, byte, append }),
        1 => (at.clone(), any::<bool>(), any::<bool>()).prop_map(|(at, excl, trunc)| Step::Create { at, excl, trunc }),
        2 => (at.clone(), 0u64..400_000).prop_map(|(at, size)| Step::Truncate { at, size }),
        1 => at.clone().prop_map(Step::Unlink),
        2 => (at.clone(), at.clone(), prop_oneof![Just(0u32), Just(1), Just(2)])
            .prop_map(|(from, to, flags)| Step::Rename { from, to, flags }),
        1 => (at.clone(), at.clone()).prop_map(|(from, to)| Step::Link { from, to }),
        1 => (at.clone(), at.clone()).prop_map(|(at, target)| Step::Symlink { at, target }),
        1 => (at.clone(), prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4755), Just(0o666), Just(0o777), Just(0o2775)])
            .prop_map(|(at, mode)| Step::Chmod { at, mode }),
        1 => (at.clone(), 0..WHO.len()).prop_map(|(at, who)| Step::Chown { at, who }),
        2 => at.prop_map(Step::Read),
    ]
}

/// Runs one step under `root`; what it returned (bytes read, or the errno).
fn apply(root: &Path, s: &Step) -> Result<Vec<u8>, i32> {
    let p = |i: usize| root.join(NAMES[i]);
    match s {
        Step::Mkdir(i) => errno(std::fs::create_dir(p(*i))).map(|_| vec![]),
        Step::Rmdir(i) => errno(std::fs::remove_dir(p(*i))).map(|_| vec![]),
        Step::Write {
            at,
            offset,
            len,
            byte,
            append,
        } => {
            let mut f = errno(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(*append)
                    .open(p(*at)),
            )?;
            if !append {
                errno(f.seek(SeekFrom::Start(*offset)))?;
            }
            let data: Vec<u8> = (0..*len)
                .map(|i| byte.wrapping_add((i / 4096) as u8))
                .collect();
            errno(f.write_all(&data))?;
            Ok(vec![])
        }
        Step::Create { at, excl, trunc } => {
            let mut o = std::fs::OpenOptions::new();
            o.write(true);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true).truncate(*trunc);
            }
            errno(o.open(p(*at))).map(|_| vec![])
        }
        Step::Truncate { at, size } => {
            let f = errno(std::fs::OpenOptions::new().write(true).open(p(*at)))?;
            errno(f.set_len(*size)).map(|_| vec![])
        }
        Step::Unlink(i) => errno(std::fs::remove_file(p(*i))).map(|_| vec![]),
        Step::Rename { from, to, flags } => rename2(&p(*from), &p(*to), *flags).map(|_| vec![]),
        Step::Link { from, to } => errno(std::fs::hard_link(p(*from), p(*to))).map(|_| vec![]),
        Step::Symlink { at, target } => {
            errno(std::os::unix::fs::symlink(NAMES[*target], p(*at))).map(|_| vec![])
        }
        Step::Chmod { at, mode } => errno(std::fs::set_permissions(
            p(*at),
            std::fs::Permissions::from_mode(*mode),
        ))
        .map(|_| vec![]),
        Step::Chown { at, who } => {
            let (uid, gid, _) = WHO[*who];
            errno(std::os::unix::fs::lchown(p(*at), Some(uid), Some(gid))).map(|_| vec![])
        }
        Step::Read(i) => {
            let mut f = errno(std::fs::File::open(p(*i)))?;
            let mut v = Vec::new();
            errno(f.read_to_end(&mut v))?;
            Ok(v)
        }
    }
}

/// What a tree looks like: per path, the type, permission bits, size, link count and (for
/// files) a digest of the contents; symlinks' targets.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let full = root.join(&r);
            let m = std::fs::symlink_metadata(&full).expect("lstat");
            let owner = format!("{}:{}", m.uid(), m.gid());
            let desc = if m.file_type().is_dir() {
                stack.push(r.clone());
                format!("dir {:o} {owner}", m.mode() & 0o7777)
            } else if m.file_type().is_symlink() {
                format!(
                    "symlink -> {:?}",
                    std::fs::read_link(&full).expect("readlink")
                )
            } else {
                let data = std::fs::read(&full).expect("read");
                let sum = data.iter().fold(0u64, |h, b| {
                    h.wrapping_mul(1_000_003).wrapping_add(u64::from(*b))
                });
                format!(
                    "file {:o} {owner} size {} nlink {} sum {sum:x}",
                    m.mode() & 0o7777,
                    m.len(),
                    m.nlink()
                )
            };
            out.insert(r.to_string_lossy().into_owned(), desc);
        }
    }
    out
}

/// Every step answers as tmpfs does (the same bytes or the same errno), and after every
/// step the two trees look the same. One mount serves every case (each case works in a
/// directory of its own), with a tiny MVCC window: the flusher runs under every step.
#[test]
fn the_mount_behaves_like_tmpfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = Mounted::start(
        &dir.path().join("data"),
        &dir.path().join("mnt"),
        &["--mvcc-window-ms", "20"],
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..40), |steps| {
        let reference = tmpfs_dir();
        let here = tempfile::tempdir_in(&mount.at).expect("scratch in the mount");
        for s in &steps {
            let want = apply(reference.path(), s);
            let got = apply(here.path(), s);
            match (&want, &got) {
                (Ok(a), Ok(b)) => prop_assert!(
                    a == b,
                    "{s:?}: read {} bytes, tmpfs read {}",
                    b.len(),
                    a.len()
                ),
                _ => prop_assert_eq!(&want, &got, "{:?}", s),
            }
            prop_assert_eq!(
                snapshot(reference.path()),
                snapshot(here.path()),
                "after {:?}",
                s
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    mount.stop();
}

/// The same with every step run as one of three users (root, and two users who share a
/// group): permission checks, ownership of what they create, chmod and chown by owners and
/// others, setuid and setgid bits cleared by writes, all answer as on tmpfs.
#[test]
fn the_mount_behaves_like_tmpfs_for_several_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The other users must reach the mount point.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mount = Mounted::start(
        &dir.path().join("data"),
        &dir.path().join("mnt"),
        &["-o", "allow_other"],
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    });
    let steps = prop::collection::vec((0..WHO.len(), step()), 1..40);
    let result = runner.run(&steps, |steps| {
        let reference = tmpfs_dir();
        let here = tempfile::tempdir_in(&mount.at).expect("scratch in the mount");
        for root in [reference.path(), here.path()] {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        for (who, s) in &steps {
            let (want, got) = {
                let _as = ActAs::new(*who);
                (apply(reference.path(), s), apply(here.path(), s))
            };
            match (&want, &got) {
                (Ok(a), Ok(b)) => prop_assert!(
                    a == b,
                    "{s:?} as {:?}: read {} bytes, tmpfs read {}",
                    WHO[*who],
                    b.len(),
                    a.len()
                ),
                _ => prop_assert_eq!(&want, &got, "{:?} as {:?}", s, WHO[*who]),
            }
            prop_assert_eq!(
                snapshot(reference.path()),
                snapshot(here.path()),
                "after {:?} as {:?}",
                s,
                WHO[*who]
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    mount.stop();
}

/// In both sync modes: `posix` with the periodic sync out of the way (an hour), so that what
/// survives is only what the kernel had when the mount died, and `always`.
#[test]
fn acknowledged_data_survives_kill_9_and_a_remount() {
    for sync in [
        ["--sync", "posix", "--sync-interval-ms", "3600000"],
        ["--sync", "always", "--sync-interval-ms", "1000"],
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, at) = (dir.path().join("data"), dir.path().join("mnt"));
        let m = Mounted::start(&data, &at, &sync);
        let synced: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        {
            let mut f = std::fs::File::create(at.join("synced")).expect("create");
            f.write_all(&synced).expect("write");
            f.sync_all().expect("fsync");
            // Still open when the mount dies.
            std::fs::create_dir(at.join("dir")).expect("mkdir");
            std::fs::write(at.join("dir/closed"), b"closed before the kill")
                .expect("write and close");
            std::fs::write(at.join("gone"), vec![7u8; 100_000]).expect("write");
            std::fs::remove_file(at.join("gone")).expect("unlink");
            std::fs::rename(at.join("dir"), at.join("moved")).expect("rename");
            m.kill9();
        }
        let m = Mounted::start(&data, &at, &sync);
        assert!(
            std::fs::read(at.join("synced")).expect("read") == synced,
            "{sync:?}: the fsynced file"
        );
        assert_eq!(
            std::fs::read(at.join("moved/closed")).expect("read"),
            b"closed before the kill",
            "{sync:?}"
        );
        assert!(!at.join("gone").exists(), "{sync:?}");
        assert!(!at.join("dir").exists(), "{sync:?}");
        m.stop();
    }
}

#[test]
fn an_open_file_outlives_its_last_name_until_it_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, at) = (dir.path().join("data"), dir.path().join("mnt"));
    let m = Mounted::start(&data, &at, &[]);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(at.join("tmp"))
        .expect("open");
    f.write_all(b"still here").expect("write");
    std::fs::remove_file(at.join("tmp")).expect("unlink");
    assert!(!at.join("tmp").exists());
    f.write_all(b", and more").expect("write after unlink");
    let meta = f.metadata().expect("fstat after unlink");
    assert_eq!(meta.len(), 20);
    assert_eq!(meta.nlink(), 0);
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut back = String::new();
    f.read_to_string(&mut back).expect("read after unlink");
    assert_eq!(back, "still here, and more");
    drop(f);
    // A new file of the same name starts empty.
    std::fs::write(at.join("tmp"), b"new").expect("write");
    assert_eq!(std::fs::read(at.join("tmp")).expect("read"), b"new");
    m.unmount_from_outside();
}

#[test]
fn concurrent_writers_of_one_directory_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, at) = (dir.path().join("data"), dir.path().join("mnt"));
    let m = Mounted::start(&data, &at, &[]);
    std::fs::create_dir(at.join("out")).expect("mkdir");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let at = at.clone();
            std::thread::spawn(move || {
                for i in 0..40u32 {
                    let body: Vec<u8> = (0..(i * 997) as usize).map(|j| t ^ (j as u8)).collect();
                    std::fs::write(at.join(format!("out/{t}-{i}")), &body).expect("write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let mut n = 0;
    for t in 0..8u8 {
        for i in 0..40u32 {
            let body: Vec<u8> = (0..(i * 997) as usize).map(|j| t ^ (j as u8)).collect();
            assert!(std::fs::read(at.join(format!("out/{t}-{i}"))).expect("read") == body);
            n += 1;
        }
    }
    assert_eq!(std::fs::read_dir(at.join("out")).expect("ls").count(), n);
    m.stop();
}

fn xattr_set(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (c(p), CString::new(name).expect("name"));
    // SAFETY: the strings are NUL-terminated and the value's pointer and length match.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn xattr_get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (c(p), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above; the buffer outlives the call and its length is given.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn xattr_list(p: &Path) -> Result<Vec<String>, i32> {
    let p = c(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above.
    let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    let mut names: Vec<String> = buf[..rc as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Sets (atime, mtime) with utimensat(2); `None` is `UTIME_OMIT`, `Some(None)` `UTIME_NOW`.
fn utimens(
    p: &Path,
    atime: Option<Option<(i64, i64)>>,
    mtime: Option<Option<(i64, i64)>>,
) -> Result<(), i32> {
    let ts = |t: Option<Option<(i64, i64)>>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some((s, ns))) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    };
    let times = [ts(atime), ts(mtime)];
    let p = c(p);
    // SAFETY: the path is NUL-terminated and `times` is an array of two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn mkfifo(p: &Path) -> Result<(), i32> {
    let p = c(p);
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(p.as_ptr(), 0o640) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

/// A fixed script of the corners applications run into, on tmpfs and on the mount: the same
/// answers (errno for errno) and the same results.
fn corners(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut log = |what: &str, r: String| out.push(format!("{what}: {r}"));
    let p = |n: &str| root.join(n);
    std::fs::create_dir(p("d")).expect("mkdir");
    std::fs::write(p("d/f"), b"x").expect("write");
    log(
        "rmdir non-empty",
        format!("{:?}", errno(std::fs::remove_dir(p("d")))),
    );
    log(
        "dir into itself",
        format!("{:?}", rename2(&p("d"), &p("d/sub"), 0)),
    );
    log(
        "link a directory",
        format!("{:?}", errno(std::fs::hard_link(p("d"), p("d2")))),
    );
    log(
        "name too long",
        format!("{:?}", errno(std::fs::write(p(&"n".repeat(256)), b""))),
    );
    log(
        "longest name",
        format!("{:?}", errno(std::fs::write(p(&"n".repeat(255)), b""))),
    );
    log(
        "unlink a directory",
        format!("{:?}", errno(std::fs::remove_file(p("d")))),
    );
    log(
        "rmdir a file",
        format!("{:?}", errno(std::fs::remove_dir(p("d/f")))),
    );
    log(
        "file as a directory",
        format!("{:?}", errno(std::fs::write(p("d/f/g"), b""))),
    );
    std::os::unix::fs::symlink("loop2", p("loop1")).expect("symlink");
    std::os::unix::fs::symlink("loop1", p("loop2")).expect("symlink");
    log(
        "symlink loop",
        format!("{:?}", errno(std::fs::read(p("loop1")))),
    );
    log(
        "dangling symlink",
        format!("{:?}", {
            std::os::unix::fs::symlink("nowhere", p("dangling")).expect("symlink");
            errno(std::fs::read(p("dangling")))
        }),
    );
    log(
        "rename noreplace onto a file",
        format!("{:?}", {
            std::fs::write(p("g"), b"g").expect("write");
            rename2(&p("g"), &p("d/f"), libc::RENAME_NOREPLACE)
        }),
    );
    log(
        "rename exchange",
        format!("{:?}", rename2(&p("g"), &p("d"), libc::RENAME_EXCHANGE)),
    );
    log(
        "after exchange",
        format!(
            "{:?} {:?}",
            std::fs::read(p("d")).ok(),
            std::fs::read(p("g/f")).ok()
        ),
    );
    log(
        "dir over a file",
        format!("{:?}", rename2(&p("g"), &p("d"), 0)),
    );
    log("fifo", format!("{:?}", mkfifo(&p("fifo"))));
    log(
        "fifo type",
        format!(
            "{:?}",
            std::fs::symlink_metadata(p("fifo"))
                .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
                .ok()
        ),
    );
    std::fs::write(p("t"), b"times").expect("write");
    log(
        "utimens exact",
        format!(
            "{:?}",
            utimens(
                &p("t"),
                Some(Some((1_000_000_000, 123_456_789))),
                Some(Some((1_500_000_000, 987_654_321)))
            )
        ),
    );
    let m = std::fs::metadata(p("t")).expect("stat");
    log(
        "times",
        format!(
            "{} {} {} {}",
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec()
        ),
    );
    log(
        "utimens omit atime, now mtime",
        format!("{:?}", utimens(&p("t"), None, Some(None))),
    );
    let m2 = std::fs::metadata(p("t")).expect("stat");
    log(
        "atime kept, mtime moved",
        format!(
            "{} {} {}",
            m2.atime(),
            m2.atime_nsec(),
            m2.mtime() > 1_500_000_000
        ),
    );
    log(
        "xattr create",
        format!("{:?}", xattr_set(&p("t"), "user.a", b"1", 0)),
    );
    log(
        "xattr create again",
        format!(
            "{:?}",
            xattr_set(&p("t"), "user.a", b"2", libc::XATTR_CREATE)
        ),
    );
    log(
        "xattr replace missing",
        format!(
            "{:?}",
            xattr_set(&p("t"), "user.b", b"2", libc::XATTR_REPLACE)
        ),
    );
    log(
        "xattr replace",
        format!(
            "{:?}",
            xattr_set(&p("t"), "user.a", b"three", libc::XATTR_REPLACE)
        ),
    );
    log("xattr get", format!("{:?}", xattr_get(&p("t"), "user.a")));
    log(
        "xattr get missing",
        format!("{:?}", xattr_get(&p("t"), "user.zz")),
    );
    xattr_set(&p("t"), "user.c", b"", 0).expect("setxattr");
    log("xattr list", format!("{:?}", xattr_list(&p("t"))));
    log(
        "xattr remove",
        format!("{:?}", {
            let n = CString::new("user.a").expect("name");
            let path = c(&p("t"));
            // SAFETY: NUL-terminated strings.
            unsafe { libc::removexattr(path.as_ptr(), n.as_ptr()) }
        }),
    );
    log("xattr list after", format!("{:?}", xattr_list(&p("t"))));
    // A directory of more entries than one page of the namespace's readdir.
    std::fs::create_dir(p("many")).expect("mkdir");
    for i in 0..700 {
        std::fs::write(p(&format!("many/entry-{i:04}")), b"").expect("create");
    }
    let mut names: Vec<_> = std::fs::read_dir(p("many"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    log(
        "many",
        format!(
            "{} first {:?} last {:?}",
            names.len(),
            names.first(),
            names.last()
        ),
    );
    let m = std::fs::metadata(p("many")).expect("stat");
    log("dir nlink", format!("{}", m.nlink()));
    out
}

#[test]
fn corners_answer_as_tmpfs_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let reference = tmpfs_dir();
    let here = tempfile::tempdir_in(&m.at).expect("scratch in the mount");
    let want = corners(reference.path());
    let got = corners(here.path());
    if std::env::var_os("SHOW").is_some() {
        eprintln!("{want:#?}");
    }
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());
    m.stop();
}

/// Runs `sh -c SCRIPT` in `dir`, capturing its output.
fn shell(script: &str, dir: &Path) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh")
}

/// Runs `sh -c SCRIPT` as `uid`:`gid`; whether it succeeded.
fn as_user(uid: u32, gid: u32, script: &str) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(gid)
        .stderr(Stdio::null())
        .status()
        .expect("sh")
        .success()
}

#[test]
fn other_users_get_the_permissions_posix_gives_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::start(
        &dir.path().join("data"),
        &dir.path().join("mnt"),
        &["-o", "allow_other"],
    );
    let at = m.at.clone();
    // The mount's parents must be searchable by the other users.
    let mut up = at.clone();
    while up.pop() {
        if up.starts_with(dir.path()) || up == dir.path() {
            let _ = std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755));
        }
    }
    let (alice, bob) = (65534u32, 65533u32);
    let root_dir = at.join("rootonly");
    std::fs::create_dir(&root_dir).expect("mkdir");
    std::fs::set_permissions(&root_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = root_dir.display();
    assert!(
        !as_user(alice, alice, &format!("touch {r}/x")),
        "create in a 0755 root directory"
    );
    assert!(
        as_user(alice, alice, &format!("ls {r}")),
        "list a 0755 root directory"
    );
    let shared = at.join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let s = shared.display();
    assert!(as_user(
        alice,
        alice,
        &format!("echo mine > {s}/a && chmod 600 {s}/a")
    ));
    assert!(
        !as_user(bob, bob, &format!("cat {s}/a")),
        "read another's 0600 file"
    );
    assert!(
        !as_user(bob, bob, &format!("rm -f {s}/a")),
        "remove another's file in a sticky directory"
    );
    assert!(
        !as_user(bob, bob, &format!("chmod 666 {s}/a")),
        "chmod another's file"
    );
    assert!(
        as_user(bob, bob, &format!("echo b > {s}/b && rm {s}/b")),
        "own files in a sticky directory"
    );
    assert!(as_user(alice, alice, &format!("rm {s}/a")));
    // A write or a truncate by an unprivileged owner drops setuid, and setgid with group
    // execute, as Linux does.
    assert!(as_user(
        alice,
        alice,
        &format!(
            "cd {s} && touch p && chmod 6755 p && [ $(stat -c %a p) = 6755 ] && echo x >> p \
             && [ $(stat -c %a p) = 755 ] && chmod 4755 p && truncate -s 10 p \
             && [ $(stat -c %a p) = 755 ] && rm p"
        )
    ));
    assert!(!shared.join("a").exists());
    m.stop();
}

/// A real workload: unpack a source tree (this crate's own, through `tar`), copy it with `cp -a`
/// inside the mount, and compare every byte and mode with `diff -r` against the same on tmpfs.
#[test]
fn a_source_tree_unpacks_copies_and_compares_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let tarball = dir.path().join("src.tar");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sh = |script: &str| {
        let out = shell(script, dir.path());
        assert!(
            out.status.success(),
            "{script}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&format!(
        "tar -C {} -cf {} src tests proto Cargo.toml",
        src.display(),
        tarball.display()
    ));
    let reference = tmpfs_dir();
    for root in [reference.path(), m.at.as_path()] {
        sh(&format!(
            "mkdir {r}/x && tar -C {r}/x -xf {t} && cp -a {r}/x {r}/y && mv {r}/y/src {r}/y/moved \
             && rsync -a {r}/x/ {r}/z/ && rsync -a --delete {r}/y/ {r}/z/",
            r = root.display(),
            t = tarball.display()
        ));
    }
    sh(&format!(
        "diff -r {}/x {}/x",
        reference.path().display(),
        m.at.display()
    ));
    sh(&format!(
        "diff -r {}/y {}/y",
        reference.path().display(),
        m.at.display()
    ));
    // rsync -a over an existing tree (with --delete) leaves a copy of y.
    sh(&format!(
        "diff -r {}/y {}/z",
        m.at.display(),
        m.at.display()
    ));
    sh(&format!(
        "diff -r {}/z {}/z",
        reference.path().display(),
        m.at.display()
    ));
    // Modes and times below the three roots, as tar, cp -a and rsync -a set them: the same as
    // on tmpfs (the roots themselves were made at different times).
    let listing = |root: &Path| {
        let out = shell(
            "find x y z -mindepth 1 -printf '%M %T@ %p\\n' | sort -k3",
            root,
        );
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let (want, got) = (listing(reference.path()), listing(&m.at));
    assert!(want.lines().count() > 30, "{want}");
    for (w, g) in want.lines().zip(got.lines()) {
        assert_eq!(w, g, "tmpfs / mount");
    }
    assert_eq!(want.lines().count(), got.lines().count());
    sh(&format!(
        "rm -r {}/x {}/y {}/z",
        m.at.display(),
        m.at.display(),
        m.at.display()
    ));
    assert_eq!(std::fs::read_dir(&m.at).expect("ls").count(), 0);
    m.stop();
}

/// `flock` and `fcntl` locks exclude other processes of the mount (the kernel keeps them: the
/// data directory serves one mount, so every process that can open the file is on it).
#[test]
fn flock_and_fcntl_locks_exclude_other_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let f = m.at.join("locked");
    std::fs::write(&f, b"x").expect("create");
    let run = |script: &str| shell(script, &m.at).status.success();
    let p = f.display();
    // Held by one process: another one's non-blocking attempt fails, and succeeds once it is
    // released.
    assert!(run(&format!(
        "flock -x {p} -c 'flock -n -x {p} -c true' && exit 1; flock -n -x {p} -c true"
    )));
    let held = run(&format!(
        "exec 9<>{p}; flock -x 9; (flock -n -x {p} -c true) && exit 1; flock -u 9; flock -n -x {p} -c true"
    ));
    assert!(held, "flock");
    // POSIX record locks through fcntl (python's lockf): a child cannot take what its
    // parent holds.
    let fcntl = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl,os,sys\n\
             fd=os.open('{p}',os.O_RDWR); fcntl.lockf(fd,fcntl.LOCK_EX)\n\
             pid=os.fork()\n\
             if pid==0:\n\
             \x20 fd2=os.open('{p}',os.O_RDWR)\n\
             \x20 try: fcntl.lockf(fd2,fcntl.LOCK_EX|fcntl.LOCK_NB); os._exit(1)\n\
             \x20 except OSError: os._exit(0)\n\
             _,st=os.waitpid(pid,0); sys.exit(os.waitstatus_to_exitcode(st))"
        ))
        .status()
        .expect("python3");
    assert!(fcntl.success(), "fcntl: a second process took a held lock");
    m.stop();
}

/// Shell workloads a user runs, on tmpfs and on the mount, with the same output: git, sqlite3,
/// make of a small C program, find and du (of files: a directory's own size differs between
/// file systems).
#[test]
fn git_sqlite_make_find_and_du_work_as_on_tmpfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let reference = tmpfs_dir();
    let script = r#"
set -e
export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
export HOME=$PWD
git init -q -b main repo && cd repo
mkdir -p src && printf 'int add(int a, int b) { return a + b; }\n' > src/add.c
printf '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("%%d\\n", add(40, 2)); return 0; }\n' > src/main.c
printf 'prog: src/main.o src/add.o\n\t$(CC) -o $@ $^\nsrc/%%.o: src/%%.c\n\t$(CC) -c -o $@ $<\nclean:\n\trm -f prog src/*.o\n' > Makefile
printf 'prog\nsrc/*.o\n' > .gitignore
git add -A && git commit -q -m first
echo "// more" >> src/add.c
git status --short
git commit -q -am second
git log --format=%s
make -s && ./prog
make -s clean && git status --short --ignored
sqlite3 db.sqlite 'create table t(k integer primary key, v text);'
sqlite3 db.sqlite "with recursive c(x) as (select 1 union all select x + 1 from c where x < 2000) insert into t select x, 'value-' || x from c;"
sqlite3 db.sqlite 'update t set v = v || v where k % 3 = 0; delete from t where k % 7 = 0; vacuum;'
sqlite3 db.sqlite 'select count(*), sum(length(v)) from t;'
cd ..
find repo -not -path '*/.git/*' -not -name db.sqlite | sort
du -b --apparent-size repo/src/*.c repo/Makefile
"#;
    let run = |root: &Path| {
        let out = shell(script, root);
        assert!(
            out.status.success(),
            "in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = run(reference.path());
    let got = run(&m.at);
    assert!(want.contains("42\n"), "{want}");
    assert_eq!(want, got);
    m.stop();
}

/// `kill -9` of the mount in the middle of a load of writers that fsync: every file whose
/// fsync returned is there, whole, after a remount; the store repairs and fsck stays clean.
#[test]
fn kill_9_during_a_write_load_loses_no_fsynced_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, at) = (dir.path().join("data"), dir.path().join("mnt"));
    let m = Mounted::start(&data, &at, &[]);
    std::fs::create_dir(at.join("load")).expect("mkdir");
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(String, usize)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = |name: &str, len: usize| -> Vec<u8> {
        let seed = name
            .bytes()
            .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
        (0..len)
            .map(|i| seed.wrapping_add((i % 253) as u8))
            .collect()
    };
    let writers: Vec<_> = (0..6)
        .map(|t| {
            let (at, acked, stop) = (at.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("load/{t}-{i}");
                    let len = (i * 7919 + t * 104_729) % 300_000;
                    let r = (|| -> std::io::Result<()> {
                        let mut f = std::fs::File::create(at.join(&name))?;
                        f.write_all(&body(&name, len))?;
                        f.sync_all()
                    })();
                    match r {
                        Ok(()) => acked.lock().push((name, len)),
                        // The mount is gone: stop.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Let the load run until some files are acknowledged, then kill in the middle of it.
    while acked.lock().len() < 150 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    m.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().clone();
    let m = Mounted::start(&data, &at, &[]);
    for (name, len) in &acked {
        let got = std::fs::read(at.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == body(name, *len),
            "{name}: {} bytes, want {len}",
            got.len()
        );
    }
    // Every file there (acknowledged or not) reads whole to its size.
    for e in std::fs::read_dir(at.join("load")).expect("ls") {
        let e = e.expect("entry");
        let len = e.metadata().expect("stat").len() as usize;
        assert_eq!(std::fs::read(e.path()).expect("read").len(), len);
    }
    m.stop();
    // The namespace the mount left is consistent.
    let (server, addr) = common::spawn_server(&data, &[]);
    let _server = common::Killed(vec![server]);
    let fsck = common::mantle_bin()
        .args(["--addr", &addr, "fsck"])
        .output()
        .expect("mantle fsck");
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    eprintln!(
        "{} fsynced files checked after kill -9; fsck clean",
        acked.len()
    );
}
