//! KPI snapshots in the workspace database: each process that runs for long
//! (`nova serve`, a run) writes its snapshot every so often and when it stops,
//! under a source name; `nova kpi` reads the latest of each source. Only the
//! last [`KEEP`] snapshots of a source are kept.

use rusqlite::{Connection, params};

use super::Snapshot;

pub const KEEP: i64 = 100;

/// Save `snapshot` as the latest of `source`.
pub fn save(conn: &Connection, source: &str, snapshot: &Snapshot) -> rusqlite::Result<()> {
    let body = serde_json::to_string(snapshot).expect("a snapshot serializes");
    conn.execute(
        "INSERT INTO kpi_snapshots (taken_at, source, snapshot) VALUES (?1, ?2, ?3)",
        params![snapshot.taken_at, source, body],
    )?;
    conn.execute(
        "DELETE FROM kpi_snapshots WHERE source = ?1 AND seq <= (SELECT MAX(seq) FROM kpi_snapshots WHERE source = ?1) - ?2",
        params![source, KEEP],
    )?;
    Ok(())
}

/// The latest snapshot of every source, by source name. A row whose JSON does
/// not parse (written by a newer nova, or damaged) is reported, not skipped.
pub fn latest(conn: &Connection) -> rusqlite::Result<Vec<(String, Result<Snapshot, String>)>> {
    let mut stmt = conn.prepare(
        "SELECT source, snapshot FROM kpi_snapshots
         WHERE seq IN (SELECT MAX(seq) FROM kpi_snapshots GROUP BY source) ORDER BY source",
    )?;
    stmt.query_map([], |r| {
        let source: String = r.get(0)?;
        let body: String = r.get(1)?;
        Ok((
            source,
            serde_json::from_str(&body).map_err(|e| e.to_string()),
        ))
    })?
    .collect()
}
