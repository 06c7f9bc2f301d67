//! `?` placeholders, the one SQL dialect callers write, rewritten per engine.
//!
//! The scanner skips string literals (`'…'`, `E'…'` with backslash escapes),
//! quoted identifiers (`"…"`), dollar-quoted bodies (`$tag$…$tag$`) and comments, so a
//! `?` inside any of them stays as it is.

/// A SQL text with `?` placeholders, scanned once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    /// Byte offsets of the placeholder `?`s.
    positions: Vec<usize>,
}

impl Placeholders {
    /// Finds the placeholders of `sql`.
    pub fn scan(sql: &str) -> Self {
        let bytes = sql.as_bytes();
        let mut positions = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'?' => {
                    positions.push(i);
                    i += 1;
                }
                b'\'' => {
                    let escapes = i > 0
                        && matches!(bytes[i - 1], b'E' | b'e')
                        && (i < 2 || !is_ident(bytes[i - 2]));
                    i = skip_quoted(bytes, i + 1, b'\'', escapes);
                }
                b'"' => i = skip_quoted(bytes, i + 1, b'"', false),
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    i = bytes[i..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |n| i + n + 1);
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i + 2),
                b'$' if i == 0 || !is_ident(bytes[i - 1]) => i = skip_dollar_quoted(sql, i),
                _ => i += 1,
            }
        }
        Self { positions }
    }

    /// How many placeholders there are.
    pub fn count(&self) -> usize {
        self.positions.len()
    }

    /// Errors unless `given` parameters fill the placeholders exactly.
    pub fn check(&self, given: usize) -> anyhow::Result<()> {
        check_count(self.count(), given)
    }

    /// PostgreSQL's numbered form: `?` → `$1`, `$2`, ….
    pub fn numbered(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 2 * self.count());
        let mut last = 0;
        for (n, &at) in self.positions.iter().enumerate() {
            out.push_str(&sql[last..at]);
            out.push('$');
            out.push_str(&(n + 1).to_string());
            last = at + 1;
        }
        out.push_str(&sql[last..]);
        out
    }

    /// psycopg2's `pyformat`: `?` → `%s`, and every literal `%` doubled (psycopg2
    /// %-formats the whole text, string literals included).
    pub fn pyformat(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + self.count());
        let mut next = self.positions.iter().peekable();
        for (at, c) in sql.char_indices() {
            if next.peek() == Some(&&at) {
                next.next();
                out.push_str("%s");
            } else if c == '%' {
                out.push_str("%%");
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Errors unless `given` parameters fill `placeholders` exactly.
pub(crate) fn check_count(placeholders: usize, given: usize) -> anyhow::Result<()> {
    if placeholders == given {
        Ok(())
    } else {
        anyhow::bail!(
            "wrong number of parameters: the query has {placeholders} `?` placeholder(s) but \
             {given} parameter(s) were given"
        )
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Index just past the closing `quote` (a doubled quote is an escaped one).
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash_escapes: bool) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash_escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Index just past a (nestable) block comment's end.
fn skip_block_comment(bytes: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// `$tag$ … $tag$` (or `$$ … $$`); anything else starting with `$` is skipped as is.
fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'_')
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$')
        || rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
    {
        return start + 1;
    }
    let delimiter = &sql[start..start + tag_len + 2];
    let body = start + delimiter.len();
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |n| body + n + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_real_placeholders() {
        let sql = "SELECT '?', \"a?\", E'\\'?', $$?$$, $t$ ? $t$ -- ?\n, ? /* ? /* ? */ */ FROM t WHERE x = ?";
        let p = Placeholders::scan(sql);
        assert_eq!(p.count(), 2);
        assert!(p
            .numbered(sql)
            .ends_with(", $1 /* ? /* ? */ */ FROM t WHERE x = $2"));
    }

    #[test]
    fn pyformat_doubles_percent_everywhere() {
        let sql = "SELECT * FROM t WHERE name LIKE 'a%' AND x = ? AND y % 2 = ?";
        let p = Placeholders::scan(sql);
        assert_eq!(
            p.pyformat(sql),
            "SELECT * FROM t WHERE name LIKE 'a%%' AND x = %s AND y %% 2 = %s"
        );
    }

    #[test]
    fn doubled_quotes_and_positional_dollars() {
        let sql = "SELECT 'it''s ?', $1, ?";
        let p = Placeholders::scan(sql);
        assert_eq!(p.count(), 1);
        assert_eq!(p.numbered(sql), "SELECT 'it''s ?', $1, $1");
    }

    #[test]
    fn check_counts() {
        let p = Placeholders::scan("INSERT INTO t VALUES (?, ?)");
        p.check(2).unwrap();
        let err = p.check(3).unwrap_err().to_string();
        assert!(err.contains("2 `?` placeholder(s) but 3"), "{err}");
    }

    #[test]
    fn unterminated_constructs_do_not_panic() {
        for sql in [
            "SELECT 'abc",
            "SELECT \"x",
            "/* open",
            "$tag$ open",
            "E'\\",
            "$",
            "?",
        ] {
            let p = Placeholders::scan(sql);
            let _ = (p.numbered(sql), p.pyformat(sql));
        }
    }
}
