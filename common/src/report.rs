//! The one ok/warn/fail scale the checking binaries (storage-setup, gpu-optimize) report in,
//! serialised as `"ok"`, `"warn"`, `"fail"`.

use serde::Serialize;

/// How one check came out; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_lowercase_and_order_by_severity() {
        assert_eq!(serde_json::to_string(&Status::Warn).unwrap(), "\"warn\"");
        assert_eq!(Status::Fail.as_str(), "fail");
        assert!(Status::Ok < Status::Warn && Status::Warn < Status::Fail);
    }
}
