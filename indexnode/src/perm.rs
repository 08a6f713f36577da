//! Permission checks: who is calling, and the classic owner/group/other mode bits.

/// Read permission.
pub const MAY_READ: u32 = 4;
/// Write permission.
pub const MAY_WRITE: u32 = 2;
/// Execute (search, for a directory) permission.
pub const MAY_EXEC: u32 = 1;

/// The caller's identity, carried in every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cred {
    /// User id; 0 is root and bypasses permission checks.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Cred {
    /// Root.
    pub fn root() -> Cred {
        Cred::default()
    }

    /// Whether this is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the caller may do `want` (a mask of `MAY_*`) on an inode with `mode`, `uid`,
    /// `gid`. Root may read and write anything, and execute anything that has some execute bit
    /// (or is a directory), as Linux does.
    pub fn may(&self, mode: u32, uid: u32, gid: u32, want: u32) -> bool {
        if self.is_root() {
            let is_dir = mode & 0o170_000 == 0o040_000;
            return want & MAY_EXEC == 0 || is_dir || mode & 0o111 != 0;
        }
        let bits = if self.uid == uid {
            (mode >> 6) & 7
        } else if self.in_group(gid) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        bits & want == want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_group_other_and_root() {
        let alice = Cred {
            uid: 1000,
            gid: 100,
            groups: vec![200],
        };
        assert!(alice.may(0o100700, 1000, 1, MAY_READ | MAY_WRITE | MAY_EXEC));
        assert!(
            !alice.may(0o100070, 1000, 100, MAY_READ),
            "owner class wins"
        );
        assert!(alice.may(0o100040, 1, 200, MAY_READ), "supplementary group");
        assert!(!alice.may(0o100004, 1, 100, MAY_READ), "group class wins");
        assert!(alice.may(0o100004, 1, 2, MAY_READ));
        let root = Cred::root();
        assert!(root.may(0o100000, 5, 5, MAY_READ | MAY_WRITE));
        assert!(!root.may(0o100600, 5, 5, MAY_EXEC));
        assert!(root.may(0o040000, 5, 5, MAY_EXEC));
    }
}
