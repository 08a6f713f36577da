//! Names and paths, validated before anything touches the store.
//!
//! A name is 1..=255 bytes without `/` or NUL and is never `.` or `..`. A path given to the
//! API is absolute and normalized: `/` alone, or `/` followed by names separated by single
//! slashes, at most [`PATH_MAX`] bytes. Symlink targets are looser (relative, with `.`, `..` and
//! repeated slashes) and are parsed by [`split_target`].

/// The longest name, in bytes.
pub const NAME_MAX: usize = 255;
/// The longest path, in bytes (including the leading slash).
pub const PATH_MAX: usize = 4096;

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An empty name.
    #[error("empty name")]
    Empty,
    /// A name longer than [`NAME_MAX`].
    #[error("name of {0} bytes is longer than {NAME_MAX}")]
    NameTooLong(usize),
    /// A path longer than [`PATH_MAX`].
    #[error("path of {0} bytes is longer than {PATH_MAX}")]
    PathTooLong(usize),
    /// A name with `/` or NUL.
    #[error("name {0:?} contains '/' or NUL")]
    BadByte(String),
    /// `.` or `..` used as a name.
    #[error("'.' and '..' are not names")]
    Dot,
    /// A path that is not absolute.
    #[error("path {0:?} is not absolute")]
    Relative(String),
    /// A path with an empty component, a trailing slash, `.` or `..`.
    #[error("path {0:?} is not normalized (empty component, trailing slash, '.' or '..')")]
    NotNormalized(String),
}

impl NameError {
    /// Whether the POSIX errno for this is `ENAMETOOLONG` (otherwise `EINVAL`).
    pub fn too_long(&self) -> bool {
        matches!(self, NameError::NameTooLong(_) | NameError::PathTooLong(_))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks one name.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    check_name_shape(name)?;
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(NameError::BadByte(lossy(name)));
    }
    Ok(())
}

/// [`check_name`] but for the bytes: for a name cut out of a path at its `/`s, the path
/// already checked for NUL once.
fn check_name_shape(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::NameTooLong(name.len()));
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    Ok(())
}

/// Splits an absolute, normalized path into its names (`/` gives none).
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, NameError> {
    if path.len() > PATH_MAX {
        return Err(NameError::PathTooLong(path.len()));
    }
    if path.first() != Some(&b'/') {
        return Err(NameError::Relative(lossy(path)));
    }
    if path == b"/" {
        return Ok(Vec::new());
    }
    // One scan for NUL over the whole path, not one per name (`/` splits it).
    if memchr::memchr(0, path).is_some() {
        return Err(NameError::BadByte(lossy(path)));
    }
    let mut out = Vec::with_capacity(16);
    let mut start = 1;
    for end in memchr::memchr_iter(b'/', &path[1..])
        .map(|i| i + 1)
        .chain(std::iter::once(path.len()))
    {
        let c = &path[start..end];
        start = end + 1;
        match check_name_shape(c) {
            Ok(()) => out.push(c),
            Err(NameError::Empty | NameError::Dot) => {
                return Err(NameError::NotNormalized(lossy(path)))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One step of a symlink target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Go to the parent (`..`; the root's parent is the root).
    Parent,
    /// Enter or name `name`.
    Name(&'a [u8]),
}

/// Parses a symlink target: whether it is absolute, and its steps (`.` and empty components
/// dropped). Targets are checked when the symlink is made: 1..=[`PATH_MAX`] bytes, no NUL, and
/// every component at most [`NAME_MAX`] bytes.
pub fn split_target(target: &[u8]) -> Result<(bool, Vec<Step<'_>>), NameError> {
    check_target(target)?;
    let absolute = target.first() == Some(&b'/');
    let steps = target
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| {
            if c == b".." {
                Step::Parent
            } else {
                Step::Name(c)
            }
        })
        .collect();
    Ok((absolute, steps))
}

/// Checks a symlink target.
pub fn check_target(target: &[u8]) -> Result<(), NameError> {
    if target.is_empty() {
        return Err(NameError::Empty);
    }
    if target.len() > PATH_MAX {
        return Err(NameError::PathTooLong(target.len()));
    }
    if target.contains(&0) {
        return Err(NameError::BadByte(lossy(target)));
    }
    if let Some(c) = target.split(|&b| b == b'/').find(|c| c.len() > NAME_MAX) {
        return Err(NameError::NameTooLong(c.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::NameTooLong(256)));
        assert!(check_name(b"").is_err());
        assert!(check_name(b"a/b").is_err());
        assert!(check_name(b"a\0").is_err());
        assert!(check_name(b".").is_err());
        assert!(check_name(b"..").is_err());
        assert!(check_name(b"...").is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(split_path(b"/").expect("root"), Vec::<&[u8]>::new());
        assert_eq!(split_path(b"/a/bc").expect("ok"), vec![&b"a"[..], b"bc"]);
        for bad in [&b""[..], b"a", b"//", b"/a/", b"/a//b", b"/a/./b", b"/a/.."] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        let long = [b"/".to_vec(), vec![b'x'; 300]].concat();
        assert!(split_path(&long).expect_err("long").too_long());
        let deep = b"/a".repeat(2049);
        assert!(split_path(&deep).expect_err("long").too_long());
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target(b"../x/./y//").expect("ok"),
            (
                false,
                vec![Step::Parent, Step::Name(b"x"), Step::Name(b"y")]
            )
        );
        assert_eq!(split_target(b"/").expect("ok"), (true, vec![]));
        assert!(split_target(b"").is_err());
        assert!(split_target(b"a\0b").is_err());
    }
}
