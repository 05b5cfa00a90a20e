//! One table of settings per adapter: each setting is written once, as a field with its doc
//! and default, and [`settings!`](crate::settings!) derives from it the struct, its
//! `Default`, a chained setter per field, a `Debug` that prints secrets as `***`, the URL
//! query keys ([`Key`]) with their parsers, and the key table of the struct's docs.
//!
//! The URL query key of a setting is its field name, and so is its setter: every adapter
//! speaks the same vocabulary (see the table in the README).
//!
//! ```
//! use std::time::Duration;
//! use aether_core::url::BrokerUrl;
//!
//! aether_core::settings! {
//!     /// Settings of a made-up transport.
//!     #[derive(Clone, PartialEq, Eq)]
//!     pub struct DemoConfig {
//!         /// Broker host. Default `localhost`.
//!         host: String = "localhost".into(),
//!         /// How long an operation may wait. Default 30 s.
//!         [key] operation_timeout: Duration = Duration::from_secs(30),
//!         /// Messages a subscription buffers. Default 1,024.
//!         [key] subscription_capacity: usize = 1024,
//!     }
//! }
//!
//! let url = BrokerUrl::parse("demo://h?operation_timeout=5s")?;
//! let mut c = DemoConfig::default().host("broker").subscription_capacity(16);
//! url.apply_query(DemoConfig::KEYS, &mut c)?;
//! assert_eq!(c.operation_timeout, Duration::from_secs(5));
//! assert!(url.apply_query(DemoConfig::KEYS, &mut c).is_ok());
//! let bad = BrokerUrl::parse("demo://h?timeout=5s")?;
//! assert!(bad.apply_query(DemoConfig::KEYS, &mut c).is_err());
//! # Ok::<(), aether_core::Error>(())
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::url::{Secret, parse_bool, parse_duration, parse_value};

/// A URL query key of a settings struct `C`: its name and how its value is applied.
pub struct Key<C> {
    /// The key, which is also the field's and the setter's name.
    pub name: &'static str,
    /// Parses `value` and sets it on the settings.
    pub apply: fn(&mut C, &str) -> Result<()>,
}

impl<C> std::fmt::Debug for Key<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A type a URL query value parses into; the key names the value in errors.
pub trait FromValue: Sized {
    /// Parses `value`, given for `key`.
    fn from_value(key: &str, value: &str) -> Result<Self>;
}

impl FromValue for bool {
    fn from_value(key: &str, value: &str) -> Result<Self> {
        parse_bool(key, value)
    }
}

impl FromValue for Duration {
    fn from_value(key: &str, value: &str) -> Result<Self> {
        parse_duration(key, value)
    }
}

impl FromValue for String {
    fn from_value(_: &str, value: &str) -> Result<Self> {
        Ok(value.to_owned())
    }
}

impl FromValue for PathBuf {
    fn from_value(_: &str, value: &str) -> Result<Self> {
        Ok(PathBuf::from(value))
    }
}

impl FromValue for Secret {
    fn from_value(_: &str, value: &str) -> Result<Self> {
        Ok(Secret::new(value))
    }
}

macro_rules! from_str_values {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(key: &str, value: &str) -> Result<Self> {
                parse_value(key, value)
            }
        }
    )*};
}
from_str_values!(u8, u16, u32, u64, usize);

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(key: &str, value: &str) -> Result<Self> {
        T::from_value(key, value).map(Some)
    }
}

/// What a setter of [`settings!`](crate::settings!) takes for a setting of type `T`: `T`
/// itself, `T` for an `Option<T>`, and `&str` for the string-like types (`String`,
/// `PathBuf`, [`Secret`] and their options). Integer literals infer the setting's type.
pub trait IntoSetting<T> {
    /// The setting's value.
    fn into_setting(self) -> T;
}

impl<T> IntoSetting<T> for T {
    fn into_setting(self) -> T {
        self
    }
}

impl<T> IntoSetting<Option<T>> for T {
    fn into_setting(self) -> Option<T> {
        Some(self)
    }
}

macro_rules! from_str_settings {
    ($($t:ty => $make:expr),*) => {$(
        impl IntoSetting<$t> for &str {
            fn into_setting(self) -> $t {
                $make(self)
            }
        }
        impl IntoSetting<Option<$t>> for &str {
            fn into_setting(self) -> Option<$t> {
                Some($make(self))
            }
        }
    )*};
}
from_str_settings!(
    String => str::to_owned,
    PathBuf => PathBuf::from,
    Secret => Secret::new
);

/// Declares a settings struct, each setting written once.
///
/// Each field is `/// doc` (stating its default), an optional `[key]` marker, then
/// `name: Type = default`. A field marked `[key]` is a URL query key of the same name,
/// parsed by its type's [`FromValue`]; `[key = path::to::fn]` applies the value with a
/// function `fn(&mut Self, &str) -> Result<()>` instead (for repeated or checked keys).
/// Unmarked fields come from other parts of the URL (host, port, user info, path).
///
/// Generated: the struct (all fields `pub`), `Default`, a setter per field taking
/// [`impl IntoSetting<Type>`](IntoSetting), a `Debug` of every field (put secrets in [`Secret`]), `KEYS` for
/// [`BrokerUrl::apply_query`](crate::url::BrokerUrl::apply_query), and a table of the
/// query keys appended to the struct's docs.
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $([$kw:ident $(= $apply:path)?])?
                $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        ///
        /// | setting (field and setter) | URL query key | meaning |
        /// |---|---|---|
        $(
            #[doc = concat!(
                "| `", stringify!($field), "` | ",
                $crate::__settings_key_cell!($field $(, $kw)?), " |",
                $($doc,)* " |"
            )]
        )*
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl $name {
            /// The URL query keys, each named like its field.
            pub const KEYS: &'static [$crate::settings::Key<$name>] = &[
                $($(
                    $crate::settings::Key {
                        name: $crate::__settings_kw!($kw, $field),
                        apply: $crate::__settings_apply!($name, $field, $ty $(, $apply)?),
                    },
                )?)*
            ];

            $(
                #[doc = concat!("Sets [`", stringify!($name), "::", stringify!($field), "`].")]
                pub fn $field(mut self, value: impl $crate::settings::IntoSetting<$ty>) -> Self {
                    self.$field = value.into_setting();
                    self
                }
            )*
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

/// Checks the `[key]` marker of [`settings!`](crate::settings!); not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_kw {
    (key, $field:ident) => {
        stringify!($field)
    };
}

/// The key column of a [`settings!`](crate::settings!) docs table; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_key_cell {
    ($field:ident) => {
        "(from the URL itself)"
    };
    ($field:ident, key) => {
        concat!("`", stringify!($field), "`")
    };
}

/// The `apply` of a [`settings!`](crate::settings!) key; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_apply {
    ($name:ident, $field:ident, $ty:ty) => {
        |c: &mut $name, v: &str| {
            c.$field = <$ty as $crate::settings::FromValue>::from_value(stringify!($field), v)?;
            Ok(())
        }
    };
    ($name:ident, $field:ident, $ty:ty, $apply:path) => {
        $apply
    };
}
