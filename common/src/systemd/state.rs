//! systemd's `ActiveState` of a unit, parsed once where systemd's answer is read.

use std::fmt;

/// A unit's `ActiveState`. Anything systemd may add later (or no answer) is [`Unknown`].
///
/// [`Unknown`]: ActiveState::Unknown
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActiveState {
    Active,
    Activating,
    Deactivating,
    Inactive,
    Failed,
    Reloading,
    #[default]
    Unknown,
}

impl ActiveState {
    pub const ALL: [ActiveState; 7] = [
        ActiveState::Active,
        ActiveState::Activating,
        ActiveState::Deactivating,
        ActiveState::Inactive,
        ActiveState::Failed,
        ActiveState::Reloading,
        ActiveState::Unknown,
    ];

    /// systemd's word (`active`, `activating` ...); anything else is `Unknown`.
    pub fn parse(s: &str) -> ActiveState {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .unwrap_or(ActiveState::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Reloading => "reloading",
            ActiveState::Unknown => "unknown",
        }
    }

    /// Running and serving its purpose: `active` or `reloading`.
    pub fn is_up(self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Reloading)
    }
}

impl From<&str> for ActiveState {
    fn from(s: &str) -> ActiveState {
        ActiveState::parse(s)
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ActiveState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ActiveState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ActiveState::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_the_rest_is_unknown() {
        for a in ActiveState::ALL {
            assert_eq!(ActiveState::parse(a.as_str()), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<ActiveState>(&j).unwrap(), a);
        }
        assert_eq!(ActiveState::parse("maintenance"), ActiveState::Unknown);
        assert_eq!(ActiveState::parse(""), ActiveState::Unknown);
        assert!(ActiveState::Reloading.is_up());
        assert!(!ActiveState::Activating.is_up());
    }
}
