//! The closed sets of states the API shows and filters by. Each is an enum
//! so that a filter with an unknown value (`?health=helthy`) is refused
//! with the allowed values named, and the OpenAPI document lists them.
//!
//! Views keep these as strings where templates compare them (`"healthy"`);
//! their schema points here (`#[schema(value_type = …)]`) and the unit tests
//! below check that every string a producer emits is a member.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! state_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The state a string names, if any.
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

state_enum! {
    /// A collector's health as the fleet view summarises it.
    HealthState {
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        /// The collector never reported health.
        Unknown = "unknown",
    }
}

state_enum! {
    /// Where a collector stands with its desired config.
    ConfigState {
        /// It reported the desired config applied.
        Applied = "applied",
        Applying = "applying",
        Failed = "failed",
        /// Desired config not yet acknowledged.
        Pending = "pending",
        /// The desired config names component types the collector lacks:
        /// it is not pushed.
        Incompatible = "incompatible",
        /// No config is desired for it.
        None = "none",
    }
}

state_enum! {
    /// The remote-config status a collector reported (OpAMP
    /// `RemoteConfigStatuses`).
    RemoteConfigState {
        Applied = "APPLIED",
        Applying = "APPLYING",
        Failed = "FAILED",
        Unset = "UNSET",
    }
}

state_enum! {
    /// An enrollment token's state.
    TokenState {
        Active = "active",
        Expired = "expired",
        /// `max_uses` reached.
        UsedUp = "used_up",
        Revoked = "revoked",
    }
}

state_enum! {
    /// How the config store reads its repository.
    StoreMode {
        /// Opened in place and watched.
        Local = "local",
        /// A bare mirror of a remote, fetched every poll interval.
        Mirror = "mirror",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_value_is_refused_naming_the_allowed_ones() {
        let err = serde_json::from_str::<HealthState>("\"helthy\"")
            .unwrap_err()
            .to_string();
        for allowed in ["healthy", "unhealthy", "unknown"] {
            assert!(err.contains(allowed), "{err}");
        }
        assert_eq!(
            serde_json::from_str::<TokenState>("\"used_up\"").unwrap(),
            TokenState::UsedUp
        );
        assert_eq!(ConfigState::parse("none"), Some(ConfigState::None));
        assert_eq!(RemoteConfigState::Applied.to_string(), "APPLIED");
    }

    #[test]
    fn the_text_of_a_state_is_its_serialized_form() {
        fn check<T: Serialize + Copy + std::fmt::Display>(all: &[T]) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(v.to_string()));
            }
        }
        check(HealthState::ALL);
        check(ConfigState::ALL);
        check(RemoteConfigState::ALL);
        check(TokenState::ALL);
        check(StoreMode::ALL);
    }

    #[test]
    fn the_schema_lists_every_value() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ConfigState::schema()).unwrap();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            ["applied", "applying", "failed", "pending", "incompatible", "none"]
        );
    }
}
