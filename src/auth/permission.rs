//! Permissions: `read`, `write` and `admin`, their names in tokens, and sets of them.

use std::ops::BitOr;

/// A set of [`Permission`]s. The flags are independent: `admin` does not imply `read` or
/// `write`, as in the original relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub const READ: Permissions = Permissions(1);
    pub const WRITE: Permissions = Permissions(1 << 1);
    pub const ADMIN: Permissions = Permissions(1 << 2);

    /// Whether every permission of `other` is in `self`.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses a comma-separated list such as `"read,write"`; blanks around names and empty
    /// items are ignored, so `""` is the empty set.
    pub fn parse_list(s: &str) -> Result<Permissions, String> {
        s.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .try_fold(Permissions::default(), |set, name| {
                Permission::from_name(name)
                    .map(|permission| set | permission.into())
                    .ok_or_else(|| {
                        format!("unknown permission `{name}`; expected read, write or admin")
                    })
            })
    }

    /// The names in the set, in the order read, write, admin.
    pub fn names(self) -> Vec<&'static str> {
        Permission::ALL
            .into_iter()
            .filter(|permission| self.contains((*permission).into()))
            .map(Permission::as_str)
            .collect()
    }
}

impl BitOr for Permissions {
    type Output = Permissions;

    fn bitor(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Read,
    Write,
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 3] = [Permission::Read, Permission::Write, Permission::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }

    /// The permission named exactly `name` (lower case, as tokens carry it).
    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL
            .into_iter()
            .find(|permission| permission.as_str() == name)
    }
}

impl From<Permission> for Permissions {
    fn from(permission: Permission) -> Permissions {
        match permission {
            Permission::Read => Permissions::READ,
            Permission::Write => Permissions::WRITE,
            Permission::Admin => Permissions::ADMIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_sets() {
        let rw = Permissions::READ | Permissions::WRITE;
        assert!(rw.contains(Permissions::READ));
        assert!(rw.contains(Permissions::WRITE));
        assert!(rw.contains(rw));
        assert!(!rw.contains(Permissions::ADMIN));
        assert!(!Permissions::ADMIN.contains(Permissions::READ));
        assert!(rw.contains(Permissions::default()));
        assert_eq!(rw.names(), vec!["read", "write"]);
        let all = Permissions::ADMIN | Permissions::WRITE | Permissions::READ;
        assert_eq!(all.names(), vec!["read", "write", "admin"]);
        assert!(Permissions::default().names().is_empty());
    }

    #[test]
    fn permissions_parse_list() {
        assert_eq!(
            Permissions::parse_list("read,write"),
            Ok(Permissions::READ | Permissions::WRITE)
        );
        assert_eq!(
            Permissions::parse_list(" admin , read ,"),
            Ok(Permissions::ADMIN | Permissions::READ)
        );
        assert_eq!(Permissions::parse_list(""), Ok(Permissions::default()));
        let err = Permissions::parse_list("read,superuser").unwrap_err();
        assert!(err.contains("`superuser`"), "{err}");
        assert!(Permissions::parse_list("READ").is_err());
    }

    #[test]
    fn permission_names_round_trip() {
        for permission in Permission::ALL {
            assert_eq!(Permission::from_name(permission.as_str()), Some(permission));
            assert_eq!(
                Permissions::from(permission).names(),
                vec![permission.as_str()]
            );
        }
        assert_eq!(Permission::from_name("Read"), None);
    }
}
