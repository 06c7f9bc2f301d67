//! Values that cross between Rust and a database, whichever the engine.

/// One value in a query's parameters or a result row.
///
/// Each pool maps its driver's values to and from these; an integer outside `i64`
/// or a column type with no mapping is an error naming the column.
///
/// `From` conversions let parameters read naturally:
///
/// ```
/// use pyo3_twisted::db::DbValue;
///
/// let user_id = "@alice:example.org";
/// let params: [DbValue; 3] = [user_id.into(), 3.into(), None::<i64>.into()];
/// assert_eq!(params[1], DbValue::Int(3));
/// assert_eq!(params[2], DbValue::Null);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum DbValue {
    /// SQL `NULL`.
    Null,
    /// A boolean (SQLite stores these as integers; reading either works).
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// A double-precision float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes (`BLOB`, `bytea`).
    Bytes(Vec<u8>),
}

impl DbValue {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DbValue::Null => "NULL",
            DbValue::Bool(_) => "bool",
            DbValue::Int(_) => "integer",
            DbValue::Float(_) => "float",
            DbValue::Text(_) => "text",
            DbValue::Bytes(_) => "bytes",
        }
    }
}

macro_rules! from_lossless {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for DbValue {
            fn from(v: $t) -> Self {
                DbValue::$variant(v.into())
            }
        }
    )*};
}

from_lossless!(
    bool => Bool, i64 => Int, i32 => Int, i16 => Int, i8 => Int, u32 => Int, u16 => Int,
    u8 => Int, f64 => Float, f32 => Float, String => Text, &str => Text, Vec<u8> => Bytes,
    &[u8] => Bytes,
);

impl From<&String> for DbValue {
    fn from(v: &String) -> Self {
        DbValue::Text(v.clone())
    }
}

impl<T: Into<DbValue>> From<Option<T>> for DbValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(DbValue::Null, Into::into)
    }
}

impl TryFrom<u64> for DbValue {
    type Error = anyhow::Error;

    fn try_from(v: u64) -> anyhow::Result<Self> {
        i64::try_from(v)
            .map(DbValue::Int)
            .map_err(|_| anyhow::anyhow!("{v} does not fit a database integer (i64)"))
    }
}

/// A row of a query's result: its values in column order.
pub type DbRow = Vec<DbValue>;

/// Reads typed values out of a [`DbRow`].
pub trait DbRowExt {
    /// The value at `index`, converted to `T`; an error names the column index and
    /// what was there.
    ///
    /// ```
    /// use pyo3_twisted::db::{DbRowExt, DbValue};
    ///
    /// let row = vec![DbValue::Text("dark_mode".into()), DbValue::Int(1), DbValue::Null];
    /// assert_eq!(row.try_get::<String>(0).unwrap(), "dark_mode");
    /// assert!(row.try_get::<bool>(1).unwrap());
    /// assert_eq!(row.try_get::<Option<i64>>(2).unwrap(), None);
    /// assert!(row.try_get::<i64>(0).is_err());
    /// ```
    fn try_get<T: FromDbValue>(&self, index: usize) -> anyhow::Result<T>;

    /// The value at `index`, moved out of the row and converted to `T`: no copy of
    /// its text or bytes, where [`DbRowExt::try_get`] clones them. The cell is left
    /// [`DbValue::Null`], also when the conversion fails (the error names the
    /// column index and what was there).
    ///
    /// ```
    /// use pyo3_twisted::db::{DbRowExt, DbValue};
    ///
    /// let rows = vec![vec![DbValue::Text("dark_mode".into()), DbValue::Int(1)]];
    /// let flags: Vec<(String, bool)> = rows
    ///     .into_iter()
    ///     .map(|mut row| Ok((row.try_take(0)?, row.try_take(1)?)))
    ///     .collect::<anyhow::Result<_>>()
    ///     .unwrap();
    /// assert_eq!(flags, [("dark_mode".to_string(), true)]);
    /// ```
    fn try_take<T: FromDbValue>(&mut self, index: usize) -> anyhow::Result<T>;
}

impl DbRowExt for DbRow {
    fn try_get<T: FromDbValue>(&self, index: usize) -> anyhow::Result<T> {
        let value = self
            .get(index)
            .ok_or_else(|| out_of_range(index, self.len()))?;
        T::from_value(value.clone()).map_err(|err| anyhow::anyhow!("column {index}: {err}"))
    }

    fn try_take<T: FromDbValue>(&mut self, index: usize) -> anyhow::Result<T> {
        let columns = self.len();
        let cell = self
            .get_mut(index)
            .ok_or_else(|| out_of_range(index, columns))?;
        T::from_value(std::mem::replace(cell, DbValue::Null))
            .map_err(|err| anyhow::anyhow!("column {index}: {err}"))
    }
}

fn out_of_range(index: usize, columns: usize) -> anyhow::Error {
    anyhow::anyhow!("column {index} is out of range: the row has {columns} column(s)")
}

/// Converts a [`DbValue`] into a Rust type; the analogue of tokio-postgres'
/// `FromSql`.
pub trait FromDbValue: Sized {
    /// Converts `value`, or explains why it cannot.
    fn from_value(value: DbValue) -> anyhow::Result<Self>;
}

fn mismatch<T>(value: &DbValue, wanted: &str) -> anyhow::Result<T> {
    let shown = match value {
        DbValue::Text(s) if s.chars().count() > 40 => {
            format!("text {:?}…", s.chars().take(40).collect::<String>())
        }
        DbValue::Bytes(b) => format!("{} bytes", b.len()),
        other => format!("{other:?}"),
    };
    anyhow::bail!("cannot read {} ({shown}) as {wanted}", value.kind())
}

impl FromDbValue for DbValue {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        Ok(value)
    }
}

impl FromDbValue for bool {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Bool(b) => Ok(b),
            DbValue::Int(0) => Ok(false),
            DbValue::Int(1) => Ok(true),
            other => mismatch(&other, "bool"),
        }
    }
}

impl FromDbValue for i64 {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Int(i) => Ok(i),
            DbValue::Bool(b) => Ok(b.into()),
            other => mismatch(&other, "i64"),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl FromDbValue for $t {
            fn from_value(value: DbValue) -> anyhow::Result<Self> {
                let i = i64::from_value(value)?;
                <$t>::try_from(i).map_err(|_| {
                    anyhow::anyhow!("{i} is out of range for {}", stringify!($t))
                })
            }
        }
    )*};
}

from_int!(i32, i16, i8, u64, u32, u16, u8, usize);

impl FromDbValue for f64 {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Float(f) => Ok(f),
            DbValue::Int(i) => Ok(i as f64),
            other => mismatch(&other, "f64"),
        }
    }
}

impl FromDbValue for String {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Text(s) => Ok(s),
            other => mismatch(&other, "String"),
        }
    }
}

impl FromDbValue for Vec<u8> {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Bytes(b) => Ok(b),
            other => mismatch(&other, "Vec<u8>"),
        }
    }
}

impl<T: FromDbValue> FromDbValue for Option<T> {
    fn from_value(value: DbValue) -> anyhow::Result<Self> {
        match value {
            DbValue::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_take_moves_the_value_out_and_explains_what_it_cannot_convert() {
        let mut row: DbRow = vec![DbValue::Text("dark_mode".into()), DbValue::Int(7)];
        let text = match &row[0] {
            DbValue::Text(s) => s.as_ptr(),
            _ => unreachable!(),
        };
        let taken: String = row.try_take(0).unwrap();
        assert_eq!(taken, "dark_mode");
        assert_eq!(taken.as_ptr(), text, "moved, not copied");
        assert_eq!(row[0], DbValue::Null);
        let err = row.try_take::<String>(1).unwrap_err().to_string();
        assert!(err.starts_with("column 1:") && err.contains('7'), "{err}");
        assert_eq!(row[1], DbValue::Null);
        let err = row.try_take::<i64>(2).unwrap_err().to_string();
        assert_eq!(err, "column 2 is out of range: the row has 2 column(s)");
        // Taken twice: the second sees the NULL left behind.
        assert_eq!(row.try_take::<Option<String>>(0).unwrap(), None);
    }

    #[test]
    fn integers_are_range_checked() {
        let row: DbRow = vec![DbValue::Int(70_000), DbValue::Int(-1)];
        assert_eq!(row.try_get::<u32>(0).unwrap(), 70_000);
        assert!(row
            .try_get::<i16>(0)
            .unwrap_err()
            .to_string()
            .contains("out of range for i16"));
        assert!(row
            .try_get::<u32>(1)
            .unwrap_err()
            .to_string()
            .contains("column 1"));
        assert!(DbValue::try_from(u64::MAX).is_err());
        assert_eq!(DbValue::try_from(7_u64).unwrap(), DbValue::Int(7));
    }

    #[test]
    fn mismatches_and_bounds_name_the_column() {
        let row: DbRow = vec![DbValue::Text("x".into())];
        let err = row.try_get::<i64>(0).unwrap_err().to_string();
        assert!(err.contains("column 0") && err.contains("as i64"), "{err}");
        assert!(row
            .try_get::<String>(3)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(row.try_get::<Vec<u8>>(0).is_err());
    }

    #[test]
    fn sqlite_booleans_and_options() {
        let row: DbRow = vec![DbValue::Int(1), DbValue::Null, DbValue::Bytes(vec![1, 2])];
        assert!(row.try_get::<bool>(0).unwrap());
        assert_eq!(row.try_get::<Option<String>>(1).unwrap(), None);
        assert_eq!(row.try_get::<Option<Vec<u8>>>(2).unwrap(), Some(vec![1, 2]));
        assert!(DbValue::Int(2).clone().kind() == "integer");
        assert!(bool::from_value(DbValue::Int(2)).is_err());
    }
}
