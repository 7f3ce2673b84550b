//! The audit trail (one row per instance outcome at the SCP) and its CSV export, and the MIDI-B
//! style `id_old,id_new` mappings. The audit holds no PHI; the mappings are PHI and, like the
//! lookup table, leave the index only through an explicit export.

use std::path::Path;

use super::db::{args, Db, DbError, Location};
use super::{now, ExportError, Index, IndexError};

/// One instance outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    /// This process's id for the association.
    pub association: String,
    pub calling_ae: String,
    pub peer: String,
    /// Anonymized study, series and SOP instance UIDs, when the instance was stored.
    pub anon_uids: Option<(String, String, String)>,
    /// The response status, `0xNNNN`.
    pub status: String,
    /// The quarantine directory name, when quarantined.
    pub reason: Option<String>,
    pub bytes: u64,
    /// What the pixel stage masked (`frames=N regions=N words=N`): counts, never what was read.
    pub pixels: Option<String>,
}

/// Who sent an instance, as the audit trail names them: our id for the association, the calling
/// AE title (the peer's word) and its address. No PHI.
#[derive(Debug, Clone)]
pub struct Caller {
    pub association: String,
    pub calling_ae: String,
    pub peer: String,
}

impl AuditRecord {
    /// The row of a stored instance, committed with it: its anonymized UIDs and what the pixel
    /// stage masked.
    pub fn stored(
        caller: &Caller,
        bytes: u64,
        anon_uids: (String, String, String),
        pixels: Option<String>,
    ) -> Self {
        AuditRecord { anon_uids: Some(anon_uids), pixels, ..Self::answered(caller, "0x0000", None, bytes) }
    }

    /// The row of a C-STORE answered with `status` (`0xNNNN`) and nothing stored, quarantined as
    /// `reason` or refused; written after the response.
    pub fn answered(caller: &Caller, status: &str, reason: Option<&str>, bytes: u64) -> Self {
        AuditRecord {
            association: caller.association.clone(),
            calling_ae: caller.calling_ae.clone(),
            peer: caller.peer.clone(),
            anon_uids: None,
            status: status.to_string(),
            reason: reason.map(str::to_string),
            bytes,
            pixels: None,
        }
    }
}

impl Index {
    /// Append an audit row; returns once it is committed.
    pub fn audit(&self, r: AuditRecord) -> Result<(), IndexError> {
        self.call(move |c| insert(c, &r).map(drop))
    }
}

const AUDIT_HEADER: [&str; 11] = [
    "time",
    "association",
    "calling_ae",
    "peer",
    "anon_study_uid",
    "anon_series_uid",
    "anon_sop_uid",
    "status",
    "quarantine_reason",
    "bytes",
    "pixels_masked",
];

fn reader(index: &Location) -> Result<Db, ExportError> {
    Db::reader(index).map_err(|source| ExportError::Index { path: index.to_string(), source })
}

/// Write one audit row inside the caller's transaction; returns its id.
pub(super) fn insert(c: &mut Db, r: &AuditRecord) -> Result<i64, IndexError> {
    let (study, series, sop) = match &r.anon_uids {
        Some((a, b, c)) => (Some(a), Some(b), Some(c)),
        None => (None, None, None),
    };
    let row = c.query_one(
        "INSERT INTO audit(at, association, calling_ae, peer, anon_study_uid, anon_series_uid,
                           anon_sop_uid, status, reason, bytes, pixels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        args![
            now(),
            &r.association,
            &r.calling_ae,
            &r.peer,
            study,
            series,
            sop,
            &r.status,
            &r.reason,
            r.bytes,
            &r.pixels
        ],
    )?;
    Ok(row.get(0)?)
}

/// Write the audit trail from `since` (our `YYYY-MM-DDTHH:MM:SS.mmmZ` form, or a prefix of it) on,
/// oldest first; returns the number of rows.
pub fn export_audit(index: &Location, out: &Path, since: Option<&str>) -> Result<usize, ExportError> {
    let db_err = |source| ExportError::Index { path: index.to_string(), source };
    let csv_err = |source| ExportError::Csv { path: out.display().to_string(), source };
    let mut conn = reader(index)?;
    let file = crate::file_modes::private_file(out).map_err(|e| csv_err(e.into()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(AUDIT_HEADER).map_err(csv_err)?;
    let mut n = 0;
    conn.query_each(
        "SELECT at, association, calling_ae, peer, COALESCE(anon_study_uid, ''),
                COALESCE(anon_series_uid, ''), COALESCE(anon_sop_uid, ''), status,
                COALESCE(reason, ''), bytes, COALESCE(pixels, '')
         FROM audit WHERE at >= ?1 ORDER BY id",
        args![since.unwrap_or("")],
        |r| -> Result<(), ExportError> {
            let mut record = Vec::with_capacity(AUDIT_HEADER.len());
            for i in 0..9 {
                record.push(r.get::<String>(i).map_err(db_err)?);
            }
            record.push(r.get::<i64>(9).map_err(db_err)?.to_string());
            record.push(r.get::<String>(10).map_err(db_err)?);
            w.write_record(record.iter().map(|c| super::export::spreadsheet_safe(c))).map_err(csv_err)?;
            n += 1;
            Ok(())
        },
    )?;
    w.flush().map_err(|e| csv_err(e.into()))?;
    Ok(n)
}

/// The two files `index export --mapping` writes into its directory.
pub const UID_MAPPING: &str = "uid_mapping.csv";
pub const PATIENT_ID_MAPPING: &str = "patient_id_mapping.csv";

/// Write `uid_mapping.csv` (every UID replaced) and `patient_id_mapping.csv` (every PatientID with
/// a study) as `id_old,id_new` into `dir`; returns the row counts. Both hold PHI.
pub fn export_mapping(index: &Location, dir: &Path) -> Result<(usize, usize), ExportError> {
    let mut conn = reader(index)?;
    let uids = mapping(
        &mut conn,
        index,
        &dir.join(UID_MAPPING),
        "SELECT phi_uid, anon_uid FROM uid_map ORDER BY phi_uid",
    )?;
    let patients = mapping(
        &mut conn,
        index,
        &dir.join(PATIENT_ID_MAPPING),
        "SELECT p.patient_id, p.anon_patient_id FROM patients p
         WHERE EXISTS (SELECT 1 FROM studies s WHERE s.patient_id = p.patient_id) ORDER BY p.patient_id",
    )?;
    Ok((uids, patients))
}

fn mapping(conn: &mut Db, index: &Location, out: &Path, sql: &str) -> Result<usize, ExportError> {
    let db_err = |source: DbError| ExportError::Index { path: index.to_string(), source };
    let csv_err = |source| ExportError::Csv { path: out.display().to_string(), source };
    let file = crate::file_modes::private_file(out).map_err(|e| csv_err(e.into()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["id_old", "id_new"]).map_err(csv_err)?;
    let mut n = 0;
    conn.query_each(sql, args![], |r| -> Result<(), ExportError> {
        let old: String = r.get(0).map_err(db_err)?;
        let new: String = r.get(1).map_err(db_err)?;
        w.write_record([old, new].iter().map(|c| super::export::spreadsheet_safe(c))).map_err(csv_err)?;
        n += 1;
        Ok(())
    })?;
    w.flush().map_err(|e| csv_err(e.into()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Owner;

    #[test]
    fn audit_rows_export_in_order_from_a_time_on() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.db");
        let index = Index::open(&path, &Owner::for_site("1")).unwrap();
        let row = |sop: &str, status: &str| AuditRecord {
            association: "a-1".into(),
            calling_ae: "PACS".into(),
            peer: "127.0.0.1:104".into(),
            anon_uids: Some(("1.1".into(), "1.2".into(), sop.into())),
            status: status.into(),
            reason: None,
            bytes: 10,
            pixels: Some("frames=1 regions=0 words=3".into()),
        };
        index.audit(row("1.3", "0x0000")).unwrap();
        index
            .audit(AuditRecord {
                anon_uids: None,
                reason: Some("DICOM_Read_Error".into()),
                ..row("", "0xC000")
            })
            .unwrap();
        let out = d.path().join("audit.csv");
        let path = Location::Sqlite(path);
        assert_eq!(export_audit(&path, &out, None).unwrap(), 2);
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], AUDIT_HEADER.join(","));
        assert!(
            lines[1].ends_with(",a-1,PACS,127.0.0.1:104,1.1,1.2,1.3,0x0000,,10,frames=1 regions=0 words=3"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(
                ",a-1,PACS,127.0.0.1:104,,,,0xC000,DICOM_Read_Error,10,frames=1 regions=0 words=3"
            ),
            "{}",
            lines[2]
        );
        assert_eq!(export_audit(&path, &out, Some("2999")).unwrap(), 0);
        assert_eq!(export_audit(&path, &out, Some("2000-01-01")).unwrap(), 2);
        index.close();
    }
}
