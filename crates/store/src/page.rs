//! Keyset pages: a page query fetches one row more than the page holds,
//! and that extra row says whether another page follows.

/// Cuts `rows` (fetched with `LIMIT limit + 1`) to `limit` rows and returns
/// the cursor of the next page, taken by `cursor` from the page's last row;
/// `None` when no extra row came back (the last page).
pub(crate) fn next_cursor<T, C>(
    rows: &mut Vec<T>,
    limit: i64,
    cursor: impl FnOnce(&T) -> C,
) -> Option<C> {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(cursor)
    } else {
        None
    }
}
