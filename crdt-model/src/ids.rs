//! Identifiers. All are short ASCII strings (`[0-9A-Za-z_-]`, at most
//! [`MAX_ID_BYTES`](crate::limits::MAX_ID_BYTES)), so they are safe as map keys, in URLs and in
//! terminal output. The model never invents ids: callers pass fresh random ones in.
//!
//! An id is held as a shared string: a chat's index names each message several times (its
//! place in the display order, its entry by id, the map that holds it) and each author once per
//! message, and copies share one allocation (with `chat/maps.rs`, this took a loaded chat's
//! index from over twice the memory of its document to less than it).

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{ModelError, limits::MAX_ID_BYTES};

fn check(kind: &str, s: &str) -> Result<(), ModelError> {
    if s.is_empty() || s.len() > MAX_ID_BYTES {
        return Err(ModelError::Invalid(format!(
            "{kind} id must be 1 to {MAX_ID_BYTES} characters"
        )));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ModelError::Invalid(format!(
            "{kind} id may contain only letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, ModelError> {
                let s = s.into();
                check($kind, &s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ModelError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl std::str::FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Identifies a chat (and its document) on every device.
    ChatId,
    "chat"
);
id_type!(
    /// Identifies a message within its chat.
    MessageId,
    "message"
);
id_type!(
    /// Identifies a device: the text form of its public key.
    DeviceId,
    "device"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids_and_rejects_the_rest() {
        assert!(MessageId::new("abc-DEF_123").is_ok());
        assert!(MessageId::new("").is_err());
        assert!(MessageId::new("a b").is_err());
        assert!(MessageId::new("é").is_err());
        assert!(MessageId::new("x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(MessageId::new("x".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn parses_from_str() {
        assert_eq!("ok".parse::<ChatId>().unwrap().as_str(), "ok");
        assert!("not ok".parse::<ChatId>().is_err());
    }
}
