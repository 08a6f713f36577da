//! The namespace operations, one file each.

pub mod common;
pub mod link;
pub mod lookup;
pub mod mkdir;
pub mod mknod;
pub mod ns_create;
pub mod ns_list;
pub mod readdir;
pub mod readlink;
pub mod rename;
pub mod rmdir;
pub mod setattr;
pub mod stat;
pub mod statfs;
pub mod symlink;
pub mod unlink;
pub mod wrote;
pub mod xattr_common;
pub mod xattr_get;
pub mod xattr_list;
pub mod xattr_remove;
pub mod xattr_set;

use crate::service::Service;

/// Registers every operation with the service's store.
pub fn register_all(s: &Service) {
    s.register::<ns_create::NsCreate>();
    s.register::<ns_list::NsList>();
    s.register::<stat::Stat>();
    s.register::<mkdir::Mkdir>();
    s.register::<mknod::Mknod>();
    s.register::<symlink::Symlink>();
    s.register::<readlink::Readlink>();
    s.register::<lookup::Lookup>();
    s.register::<link::Link>();
    s.register::<unlink::Unlink>();
    s.register::<rmdir::Rmdir>();
    s.register::<rename::Rename>();
    s.register::<readdir::Readdir>();
    s.register::<setattr::SetAttr>();
    s.register::<statfs::StatFs>();
    s.register::<xattr_set::XattrSet>();
    s.register::<xattr_get::XattrGet>();
    s.register::<xattr_list::XattrList>();
    s.register::<xattr_remove::XattrRemove>();
    s.register::<wrote::Wrote>();
}
