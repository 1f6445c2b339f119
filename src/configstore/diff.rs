//! A line diff of two rendered configs, in unified format (what `git diff`
//! shows, so operators read it without learning anything new).
//!
//! Renders are small (tens to hundreds of lines), so a longest common
//! subsequence table over the lines between the common prefix and suffix is
//! simple and fast enough; beyond [`MAX_CELLS`] the middle is shown as
//! removed and re-added instead of computing a table too large to hold.

/// Largest LCS table (lines × lines) computed.
const MAX_CELLS: usize = 4_000_000;
/// Unchanged lines shown around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Same(usize, usize),
    Removed(usize),
    Added(usize),
}

/// The edit script from `a` to `b`.
fn script(a: &[&str], b: &[&str]) -> Vec<Line> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<Line> = (0..prefix).map(|i| Line::Same(i, i)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > MAX_CELLS {
        out.extend((0..n).map(|i| Line::Removed(prefix + i)));
        out.extend((0..m).map(|j| Line::Added(prefix + j)));
    } else {
        // lcs[i][j]: LCS length of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                out.push(Line::Same(prefix + i, prefix + j));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                // Removals before additions on a tie, as git shows them.
                out.push(Line::Removed(prefix + i));
                i += 1;
            } else {
                out.push(Line::Added(prefix + j));
                j += 1;
            }
        }
    }
    out.extend((0..suffix).map(|k| Line::Same(a.len() - suffix + k, b.len() - suffix + k)));
    out
}

/// Unified diff of `a` and `b` with `--- from` / `+++ to` headers; empty
/// when they are equal.
pub fn unified(a: &str, b: &str, from: &str, to: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let s = script(&al, &bl);
    let changed: Vec<usize> = (0..s.len()).filter(|&k| !matches!(s[k], Line::Same(..))).collect();
    if changed.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {from}\n+++ {to}\n");
    let mut k = 0;
    while k < changed.len() {
        // A hunk: changes closer than 2 × CONTEXT lines share one.
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(s.len());
        let hunk = &s[start..end];
        let a_start = hunk.iter().find_map(|l| match l {
            Line::Same(i, _) | Line::Removed(i) => Some(*i),
            Line::Added(_) => None,
        });
        let b_start = hunk.iter().find_map(|l| match l {
            Line::Same(_, j) | Line::Added(j) => Some(*j),
            Line::Removed(_) => None,
        });
        let a_len = hunk.iter().filter(|l| !matches!(l, Line::Added(_))).count();
        let b_len = hunk.iter().filter(|l| !matches!(l, Line::Removed(_))).count();
        // Unified format: 1-based start, or the line before for an empty side.
        let pos = |start: Option<usize>, len: usize| match start {
            Some(s) if len > 0 => s + 1,
            _ => 0,
        };
        out.push_str(&format!(
            "@@ -{},{a_len} +{},{b_len} @@\n",
            pos(a_start, a_len),
            pos(b_start, b_len)
        ));
        for l in hunk {
            match *l {
                Line::Same(i, _) => out.push_str(&format!(" {}\n", al[i])),
                Line::Removed(i) => out.push_str(&format!("-{}\n", al[i])),
                Line::Added(j) => out.push_str(&format!("+{}\n", bl[j])),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn a_change_is_shown_with_context_in_unified_format() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n";
        // Five unchanged lines between two changes: one hunk, as git does.
        assert_eq!(
            unified(a, b, "a/c1", "b/c2"),
            "--- a/c1\n+++ b/c2\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+11\n"
        );
        // Far apart: two hunks.
        let a: String = (1..=30).map(|i| format!("{i}\n")).collect();
        let b = a
            .replace("\n3\n", "\nthree\n")
            .replace("\n27\n", "\n")
            .replace("\n28\n", "\n28\nnew\n");
        let d = unified(&a, &b, "a", "b");
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(d.contains("@@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n 4\n"), "{d}");
        assert!(
            d.contains("@@ -24,7 +24,7 @@\n 24\n 25\n 26\n-27\n 28\n+new\n 29\n 30\n"),
            "{d}"
        );
    }

    #[test]
    fn from_nothing_everything_is_added() {
        assert_eq!(
            unified("", "x\ny\n", "a", "b"),
            "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+x\n+y\n"
        );
    }
}
