//! Small display helpers shared by pages: times, commits, selectors.

use crate::clock::Timestamp;

/// A time as pages show it: the UTC value in the markup (readable without
/// scripts), turned into the browser's zone (UTC on hover) by app.js.
#[derive(Debug, Clone)]
pub struct TimeView {
    /// RFC 3339, for `<time datetime>`.
    pub iso: String,
    /// `2026-12-01 09:15:27 UTC`.
    pub utc: String,
}

impl TimeView {
    pub fn new(t: Timestamp) -> Self {
        let iso = humantime::format_rfc3339_seconds(t.as_system_time()).to_string();
        let utc = iso.replacen('T', " ", 1).trim_end_matches('Z').to_string() + " UTC";
        TimeView { iso, utc }
    }
}

/// The first 12 hex digits of a commit id.
pub fn short_commit(c: &str) -> String {
    c.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_utc_for_readers_without_scripts() {
        let t = TimeView::new(Timestamp(1_764_580_527_000));
        assert_eq!(t.iso, "2025-12-01T09:15:27Z");
        assert_eq!(t.utc, "2025-12-01 09:15:27 UTC");
    }
}
