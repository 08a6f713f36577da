//! The namespace model the model tests share (the service in process, and a cluster through
//! the SDK): random operation sequences and an in-memory tree that says what each operation
//! must answer. Included by `coprocessor/tests/model.rs` and `mantle/tests/cluster_model.rs`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use coprocessor::{Errno, FsError};
use indexnode::Cred;
use metastore::FileType;
use proptest::prelude::*;

fn root() -> Cred {
    Cred::root()
}

fn alice() -> Cred {
    Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Mkdir(String, u8),
    Create(String, u8),
    Unlink(String, u8),
    Rmdir(String, u8),
    Rename(String, String, u32, u8),
    Link(String, String, u8),
    Symlink(String, String, u8),
    Stat(String, bool, u8),
    Chmod(String, u32, u8),
}

pub fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
        .prop_map(|v| format!("/{}", v.join("/")))
}

pub fn op() -> impl Strategy<Value = Op> {
    let who = 0u8..2;
    prop_oneof![
        4 => (path(), who.clone()).prop_map(|(p, w)| Op::Mkdir(p, w)),
        4 => (path(), who.clone()).prop_map(|(p, w)| Op::Create(p, w)),
        2 => (path(), who.clone()).prop_map(|(p, w)| Op::Unlink(p, w)),
        2 => (path(), who.clone()).prop_map(|(p, w)| Op::Rmdir(p, w)),
        4 => (path(), path(), prop::sample::select(vec![0u32, 0, 1, 2]), who.clone())
            .prop_map(|(a, b, f, w)| Op::Rename(a, b, f, w)),
        2 => (path(), path(), who.clone()).prop_map(|(a, b, w)| Op::Link(a, b, w)),
        2 => (path(), prop::sample::select(vec!["/a", "b", "../a", "/a/b", "c/.."]), who.clone())
            .prop_map(|(p, t, w)| Op::Symlink(p, t.to_string(), w)),
        2 => (path(), any::<bool>(), who.clone()).prop_map(|(p, f, w)| Op::Stat(p, f, w)),
        2 => (path(), prop::sample::select(vec![0o755u32, 0o700, 0o1777, 0o500]), who)
            .prop_map(|(p, m, w)| Op::Chmod(p, m, w)),
    ]
}

pub fn cred(who: u8) -> Cred {
    if who == 0 {
        root()
    } else {
        alice()
    }
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug)]
pub struct Node {
    kind: FileType,
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    children: BTreeMap<String, u64>,
    target: String,
    parent: u64,
}

pub struct Model {
    nodes: HashMap<u64, Node>,
    next: u64,
}

pub type R<T> = Result<T, Errno>;

pub const ROOT: u64 = 1;

impl Model {
    pub fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: FileType::Directory,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                children: BTreeMap::new(),
                target: String::new(),
                parent: ROOT,
            },
        );
        Model { nodes, next: 2 }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    fn may(&self, c: &Cred, id: u64, want: u32) -> bool {
        let n = self.node(id);
        c.may(n.kind.bits() | n.perm, n.uid, n.gid, want)
    }

    fn split(p: &str) -> Vec<String> {
        p[1..].split('/').map(str::to_string).collect()
    }

    fn steps(target: &str) -> (bool, Vec<String>) {
        let abs = target.starts_with('/');
        let v = target
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        (abs, v)
    }

    /// Walks `steps` as directories.
    fn walk(&self, stack: &mut Vec<u64>, steps: Vec<String>, c: &Cred, budget: &mut u32) -> R<()> {
        let mut steps: std::collections::VecDeque<String> = steps.into();
        while let Some(s) = steps.pop_front() {
            if s == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let top = *stack.last().expect("stack");
            if !self.may(c, top, 1) {
                return Err(Errno::EACCES);
            }
            match self.node(top).children.get(&s) {
                None => return Err(Errno::ENOENT),
                Some(&id) => match self.node(id).kind {
                    FileType::Directory => stack.push(id),
                    FileType::Symlink => {
                        if *budget == 0 {
                            return Err(Errno::ELOOP);
                        }
                        *budget -= 1;
                        let (abs, t) = Self::steps(&self.node(id).target);
                        if abs {
                            stack.truncate(1);
                        }
                        for x in t.into_iter().rev() {
                            steps.push_front(x);
                        }
                    }
                    _ => return Err(Errno::ENOTDIR),
                },
            }
        }
        Ok(())
    }

    fn locate(&self, p: &str, c: &Cred) -> R<(u64, String)> {
        let mut names = Self::split(p);
        let last = names.pop().expect("name");
        let mut stack = vec![ROOT];
        self.walk(&mut stack, names, c, &mut 40)?;
        let top = *stack.last().expect("stack");
        if !self.may(c, top, 1) {
            return Err(Errno::EACCES);
        }
        Ok((top, last))
    }

    fn object(&self, p: &str, follow: bool, c: &Cred) -> R<u64> {
        let mut budget = 40;
        let mut stack = vec![ROOT];
        let mut steps = Self::split(p);
        loop {
            let last = steps.pop();
            self.walk(&mut stack, steps, c, &mut budget)?;
            let top = *stack.last().expect("stack");
            let name = match last {
                None => return Ok(top),
                Some(n) if n == ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    return Ok(*stack.last().expect("stack"));
                }
                Some(n) => n,
            };
            if !self.may(c, top, 1) {
                return Err(Errno::EACCES);
            }
            match self.node(top).children.get(&name) {
                None => return Err(Errno::ENOENT),
                Some(&id) if follow && self.node(id).kind == FileType::Symlink => {
                    if budget == 0 {
                        return Err(Errno::ELOOP);
                    }
                    budget -= 1;
                    let (abs, t) = Self::steps(&self.node(id).target);
                    if abs {
                        stack.truncate(1);
                    }
                    steps = t;
                }
                Some(&id) => return Ok(id),
            }
        }
    }

    fn sticky_ok(&self, dir: u64, owner: u32, c: &Cred) -> bool {
        let d = self.node(dir);
        d.perm & 0o1000 == 0 || c.uid == 0 || c.uid == owner || c.uid == d.uid
    }

    fn new_node(
        &mut self,
        dir: u64,
        name: &str,
        kind: FileType,
        perm: u32,
        c: &Cred,
        target: &str,
    ) {
        let id = self.next;
        self.next += 1;
        let is_dir = kind == FileType::Directory;
        self.nodes.insert(
            id,
            Node {
                kind,
                perm,
                uid: c.uid,
                gid: c.gid,
                nlink: if is_dir { 2 } else { 1 },
                children: BTreeMap::new(),
                target: target.to_string(),
                parent: dir,
            },
        );
        let d = self.nodes.get_mut(&dir).expect("dir");
        d.children.insert(name.to_string(), id);
        if is_dir {
            d.nlink += 1;
        }
    }

    fn create(&mut self, p: &str, kind: FileType, perm: u32, c: &Cred, target: &str) -> R<()> {
        let (dir, name) = self.locate(p, c)?;
        if !self.may(c, dir, 3) {
            return Err(Errno::EACCES);
        }
        if self.node(dir).children.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        self.new_node(dir, &name, kind, perm, c, target);
        Ok(())
    }

    fn drop_link(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.nlink -= 1;
        if n.nlink == 0 {
            self.nodes.remove(&id);
        }
    }

    fn unlink(&mut self, p: &str, c: &Cred, dir_wanted: bool) -> R<()> {
        let (dir, name) = self.locate(p, c)?;
        if !self.may(c, dir, 3) {
            return Err(Errno::EACCES);
        }
        let Some(&id) = self.node(dir).children.get(&name) else {
            return Err(Errno::ENOENT);
        };
        let is_dir = self.node(id).kind == FileType::Directory;
        if is_dir && !dir_wanted {
            return Err(Errno::EISDIR);
        }
        if !is_dir && dir_wanted {
            return Err(Errno::ENOTDIR);
        }
        if !self.sticky_ok(dir, self.node(id).uid, c) {
            return Err(Errno::EPERM);
        }
        if is_dir {
            if !self.node(id).children.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            self.nodes.remove(&id);
            self.nodes.get_mut(&dir).expect("dir").nlink -= 1;
        } else {
            self.drop_link(id);
        }
        self.nodes
            .get_mut(&dir)
            .expect("dir")
            .children
            .remove(&name);
        Ok(())
    }

    fn is_ancestor(&self, a: u64, mut d: u64) -> bool {
        loop {
            if d == a {
                return true;
            }
            let p = self.node(d).parent;
            if p == d {
                return false;
            }
            d = p;
        }
    }

    fn rename(&mut self, from: &str, to: &str, flags: u32, c: &Cred) -> R<()> {
        let (sdir, sname) = self.locate(from, c)?;
        let (ddir, dname) = self.locate(to, c)?;
        if !self.may(c, sdir, 3) || !self.may(c, ddir, 3) {
            return Err(Errno::EACCES);
        }
        let Some(&sid) = self.node(sdir).children.get(&sname) else {
            return Err(Errno::ENOENT);
        };
        let did = self.node(ddir).children.get(&dname).copied();
        if did.is_some() && flags == 1 {
            return Err(Errno::EEXIST);
        }
        if sdir == ddir && sname == dname {
            return Ok(());
        }
        if did == Some(sid) {
            return Ok(());
        }
        if !self.sticky_ok(sdir, self.node(sid).uid, c) {
            return Err(Errno::EPERM);
        }
        let exchange = flags == 2;
        if did.is_none() && exchange {
            return Err(Errno::ENOENT);
        }
        if let Some(did) = did {
            if !self.sticky_ok(ddir, self.node(did).uid, c) {
                return Err(Errno::EPERM);
            }
        }
        let s_dir = self.node(sid).kind == FileType::Directory;
        let moves = sdir != ddir;
        if s_dir && moves {
            if self.is_ancestor(sid, ddir) {
                return Err(Errno::EINVAL);
            }
            if !self.may(c, sid, 2) {
                return Err(Errno::EACCES);
            }
        }
        if exchange {
            let did = did.expect("exists");
            let d_dir = self.node(did).kind == FileType::Directory;
            if d_dir && moves && self.is_ancestor(did, sdir) {
                return Err(Errno::EINVAL);
            }
            self.nodes
                .get_mut(&sdir)
                .expect("dir")
                .children
                .insert(sname.clone(), did);
            self.nodes
                .get_mut(&ddir)
                .expect("dir")
                .children
                .insert(dname.clone(), sid);
            if s_dir {
                self.nodes.get_mut(&sid).expect("n").parent = ddir;
            }
            if d_dir {
                self.nodes.get_mut(&did).expect("n").parent = sdir;
            }
            if moves {
                let (s, d) = (i64::from(s_dir), i64::from(d_dir));
                let sd = self.nodes.get_mut(&sdir).expect("dir");
                sd.nlink = (sd.nlink as i64 + d - s) as u64;
                let dd = self.nodes.get_mut(&ddir).expect("dir");
                dd.nlink = (dd.nlink as i64 + s - d) as u64;
            }
            return Ok(());
        }
        if let Some(did) = did {
            let d_dir = self.node(did).kind == FileType::Directory;
            match (s_dir, d_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    if !self.node(did).children.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                    self.nodes.remove(&did);
                    self.nodes.get_mut(&ddir).expect("dir").nlink -= 1;
                }
                (false, false) => self.drop_link(did),
            }
            self.nodes
                .get_mut(&ddir)
                .expect("dir")
                .children
                .remove(&dname);
        }
        self.nodes
            .get_mut(&sdir)
            .expect("dir")
            .children
            .remove(&sname);
        self.nodes
            .get_mut(&ddir)
            .expect("dir")
            .children
            .insert(dname, sid);
        if s_dir {
            self.nodes.get_mut(&sid).expect("n").parent = ddir;
            if moves {
                self.nodes.get_mut(&sdir).expect("dir").nlink -= 1;
                self.nodes.get_mut(&ddir).expect("dir").nlink += 1;
            }
        }
        Ok(())
    }

    fn link(&mut self, from: &str, to: &str, c: &Cred) -> R<()> {
        let id = self.object(from, false, c)?;
        if self.node(id).kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        let (dir, name) = self.locate(to, c)?;
        if !self.may(c, dir, 3) {
            return Err(Errno::EACCES);
        }
        if self.node(dir).children.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        self.nodes.get_mut(&id).expect("n").nlink += 1;
        self.nodes
            .get_mut(&dir)
            .expect("dir")
            .children
            .insert(name, id);
        Ok(())
    }

    fn chmod(&mut self, p: &str, mode: u32, c: &Cred) -> R<()> {
        let id = self.object(p, true, c)?;
        let n = self.node(id);
        if c.uid != 0 && c.uid != n.uid {
            return Err(Errno::EPERM);
        }
        let mut perm = mode;
        if c.uid != 0 && !c.in_group(n.gid) {
            perm &= !0o2000;
        }
        self.nodes.get_mut(&id).expect("n").perm = perm;
        Ok(())
    }

    /// (path, kind, perm, uid, nlink, target) of every entry, sorted.
    pub fn listing(&self) -> Vec<(String, FileType, u32, u32, u64, String)> {
        let mut out = Vec::new();
        let mut todo = vec![(ROOT, String::new())];
        while let Some((dir, prefix)) = todo.pop() {
            for (name, &id) in &self.node(dir).children {
                let n = self.node(id);
                let path = format!("{prefix}/{name}");
                let target = if n.kind == FileType::Symlink {
                    n.target.clone()
                } else {
                    String::new()
                };
                out.push((path.clone(), n.kind, n.perm, n.uid, n.nlink, target));
                if n.kind == FileType::Directory {
                    todo.push((id, path));
                }
            }
        }
        out.sort();
        out
    }
}

pub fn res<T>(r: Result<T, FsError>) -> R<()> {
    r.map(|_| ()).map_err(|e| e.errno)
}

pub fn apply_model(m: &mut Model, op: &Op) -> R<()> {
    match op {
        Op::Mkdir(p, w) => m.create(p, FileType::Directory, 0o755, &cred(*w), ""),
        Op::Create(p, w) => m.create(p, FileType::Regular, 0o644, &cred(*w), ""),
        Op::Unlink(p, w) => m.unlink(p, &cred(*w), false),
        Op::Rmdir(p, w) => m.unlink(p, &cred(*w), true),
        Op::Rename(a, b, fl, w) => m.rename(a, b, *fl, &cred(*w)),
        Op::Link(a, b, w) => m.link(a, b, &cred(*w)),
        Op::Symlink(p, t, w) => m.create(p, FileType::Symlink, 0o777, &cred(*w), t),
        Op::Stat(p, fol, w) => m.object(p, *fol, &cred(*w)).map(|_| ()),
        Op::Chmod(p, mode, w) => m.chmod(p, *mode, &cred(*w)),
    }
}
