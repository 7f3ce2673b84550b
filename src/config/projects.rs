//! Several projects on one node. A configuration file holds either `project:` (one project, as
//! before) or `projects:`, a list whose entries name their own AE title, identity, anonymization,
//! filters, storage and upload target. Each entry is laid over the file's top-level `scp`,
//! `storage` and `upload` sections, which act as shared defaults, and resolves to a complete
//! [`Config`] for that project alone: the node then runs one pipeline, index, spool and uploader
//! per project, and the listener routes each association by its called AE title.
//!
//! The overlay works on YAML values, so an entry's `upload:` names only what differs (its bucket
//! prefix, its Cognito user) and unknown keys are still errors, reported as `projects[1].upload`.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use super::{
    Config, HttpConfig, IndexConfig, LoggingConfig, NodeConfig, ProjectConfig, ScpConfig, StorageConfig,
    UploadConfig,
};

/// The keys of an entry that belong to the listener's per-AE settings (`scp`); the rest of
/// `scp` (ports, TLS, limits, timeouts) is node-wide.
const SCP_KEYS: [&str; 6] = [
    "ae_title",
    "allowed_calling_ae_titles",
    "modalities",
    "storage_classes",
    "transfer_syntaxes",
    "tls_allowed_subjects",
];

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    project: Option<ProjectConfig>,
    #[serde(default)]
    projects: Option<Vec<Mapping>>,
    #[serde(default)]
    scp: ScpConfig,
    #[serde(default)]
    upload: UploadConfig,
    #[serde(default)]
    storage: StorageConfig,
    #[serde(default)]
    logging: LoggingConfig,
    #[serde(default)]
    http: HttpConfig,
    /// Shared by every project: a PACS to retrieve from, and DICOM destinations, to which each
    /// project exports its own archive.
    #[serde(default)]
    pacs: Vec<super::DicomPeer>,
    #[serde(default)]
    export: super::ExportConfig,
    /// Shared by the projects (each in its own PostgreSQL schema), overridable per project.
    #[serde(default)]
    index: IndexConfig,
    #[serde(default)]
    node: NodeConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Yaml(serde_norway::Error),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Parse a configuration file's text into one validated [`Config`] per project. Every problem of
/// every project is reported at once, each with its dotted key (`projects[1].upload.bucket`).
pub fn parse(text: &str) -> Result<Vec<Config>, ParseError> {
    let file: ConfigFile = serde_norway::from_str(text).map_err(ParseError::Yaml)?;
    let base = |project| Config {
        project,
        scp: file.scp.clone(),
        upload: file.upload.clone(),
        storage: file.storage.clone(),
        logging: file.logging.clone(),
        http: file.http.clone(),
        pacs: file.pacs.clone(),
        export: file.export.clone(),
        index: file.index.clone(),
        node: file.node.clone(),
    };
    let entries = match (file.project.clone(), file.projects.clone()) {
        (Some(project), None) => {
            let config = base(project);
            let problems = config.validate();
            return if problems.is_empty() { Ok(vec![config]) } else { Err(ParseError::Invalid(problems)) };
        }
        (None, Some(entries)) if !entries.is_empty() => entries,
        (None, Some(_)) => {
            return Err(ParseError::Invalid(vec!["projects: must list at least one project".into()]))
        }
        (Some(_), Some(_)) => {
            return Err(ParseError::Invalid(vec![
                "project, projects: set one: project for a single project, projects for several".into(),
            ]))
        }
        (None, None) => {
            return Err(ParseError::Invalid(vec!["project: missing (or projects: a list)".into()]))
        }
    };
    let mut problems = Vec::new();
    let mut configs = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        match resolve(&file, entry, i) {
            Ok(config) => {
                let name = config.project.name.clone();
                for p in config.validate() {
                    let p = format!("projects[{i}] ({name}).{p}");
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
                configs.push(config);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    problems.extend(shared_nothing(&configs));
    if problems.is_empty() {
        Ok(configs)
    } else {
        Err(ParseError::Invalid(problems))
    }
}

/// Lay entry `i` over the shared sections.
fn resolve(file: &ConfigFile, entry: Mapping, i: usize) -> Result<Config, Vec<String>> {
    let mut scp = Mapping::new();
    let mut storage = Mapping::new();
    let mut upload = Mapping::new();
    let mut index = Mapping::new();
    let mut project = Mapping::new();
    let mut problems = Vec::new();
    for (key, value) in entry {
        match key.as_str() {
            Some(k) if SCP_KEYS.contains(&k) => {
                scp.insert(key, value);
            }
            Some(section @ ("storage" | "upload" | "index")) => match value {
                Value::Mapping(m) => {
                    let into = match section {
                        "storage" => &mut storage,
                        "upload" => &mut upload,
                        _ => &mut index,
                    };
                    into.extend(m);
                }
                _ => problems.push(format!("projects[{i}].{}: must be a mapping", key.as_str().unwrap_or(""))),
            },
            Some(k) if ["scp", "logging", "http", "node", "project", "projects"].contains(&k) => problems.push(format!(
                "projects[{i}].{k}: node-wide; set it at the top level (a project sets ae_title, filters, storage, upload and index)"
            )),
            _ => {
                project.insert(key, value);
            }
        }
    }
    let project: Result<ProjectConfig, _> = serde_norway::from_value(Value::Mapping(project));
    let project = project.map_err(|e| problems.push(format!("projects[{i}]: {e}"))).ok();
    let scp = overlay(&file.scp, scp).map_err(|e| problems.push(format!("projects[{i}]: {e}"))).ok();
    let storage = overlay(&file.storage, storage)
        .map_err(|e| problems.push(format!("projects[{i}].storage: {e}")))
        .ok();
    let upload =
        overlay(&file.upload, upload).map_err(|e| problems.push(format!("projects[{i}].upload: {e}"))).ok();
    let index =
        overlay(&file.index, index).map_err(|e| problems.push(format!("projects[{i}].index: {e}"))).ok();
    match (project, scp, storage, upload, index) {
        (Some(project), Some(scp), Some(storage), Some(upload), Some(index)) if problems.is_empty() => {
            Ok(Config {
                project,
                scp,
                upload,
                storage,
                logging: file.logging.clone(),
                http: file.http.clone(),
                pacs: file.pacs.clone(),
                export: file.export.clone(),
                index,
                node: file.node.clone(),
            })
        }
        _ => Err(problems),
    }
}

/// `base` with the keys of `over` replaced: a project's section names only what differs.
fn overlay<T: Serialize + DeserializeOwned>(base: &T, over: Mapping) -> Result<T, String> {
    let mut merged = match serde_norway::to_value(base) {
        Ok(Value::Mapping(m)) => m,
        Ok(_) | Err(_) => Mapping::new(),
    };
    merged.extend(over);
    serde_norway::from_value(Value::Mapping(merged)).map_err(|e| e.to_string())
}

/// Projects never share what keeps them apart: AE title, name, site id (it is in every pseudonym
/// UID, so one original study sent to two projects would get the same UIDs in both), storage
/// directory (its index, queue and pseudonym counter).
fn shared_nothing(configs: &[Config]) -> Vec<String> {
    let mut problems = Vec::new();
    // `key` is `None` for a project the rule does not concern.
    let mut check = |what: &str, key: fn(&Config) -> Option<String>| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, c) in configs.iter().enumerate() {
            let Some(key) = key(c) else { continue };
            if let Some(first) = seen.insert(key.clone(), i) {
                problems.push(format!(
                    "projects[{i}].{what}: {key:?} is also projects[{first}]'s; projects never share it"
                ));
            }
        }
    };
    check("ae_title", |c| Some(c.scp.ae_title.trim().to_string()));
    check("name", |c| Some(c.project.name.clone()));
    check("site_id", |c| Some(c.project.site_id.clone()));
    check("storage.dir", |c| Some(normalise(&c.storage.dir)));
    // Two projects in one PostgreSQL schema would share patients and numbers. (Two connection
    // strings may name one database; the schema alone keeps them apart.)
    check("index.schema", |c| {
        (c.index.backend == super::IndexBackend::Postgres).then(|| c.index.schema_of(&c.project.name))
    });
    problems
}

/// A directory compared by its components, so `./data/a/` and `data/a` are the same place.
fn normalise(dir: &std::path::Path) -> String {
    use std::path::Component;
    let parts: Vec<String> = dir
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// The project called `name`, or the only one.
pub fn choose(all: Vec<Config>, name: Option<&str>) -> Result<Config, String> {
    let names = || all.iter().map(|c| c.project.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => {
            let known = names();
            all.into_iter()
                .find(|c| c.project.name == name)
                .ok_or_else(|| format!("--project {name}: no such project (the file has {known})"))
        }
        None if all.len() == 1 => Ok(all.into_iter().next().expect("one element: checked above")),
        None => {
            Err(format!("the file has {} projects ({}): choose one with --project NAME", all.len(), names()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "
scp: { host: 127.0.0.1, port: 0, allowed_calling_ae_titles: [PACS] }
storage: { min_free_bytes: 1024 }
upload: { region: eu-west-1, bucket: shared, prefix: research }
projects:
  - { name: TBI, ae_title: TBI_ANON, site_id: '972149', storage: { dir: ./data/tbi }, upload: { prefix: tbi } }
  - { name: STROKE, ae_title: STROKE_ANON, site_id: '972150', pseudonyms: keyed, storage: { dir: ./data/stroke },
      allowed_calling_ae_titles: [CT1] }
";

    #[test]
    fn each_project_is_laid_over_the_shared_sections() {
        let all = parse(TWO).unwrap();
        assert_eq!(all.len(), 2);
        let (tbi, stroke) = (&all[0], &all[1]);
        assert_eq!(tbi.scp.ae_title, "TBI_ANON");
        assert_eq!(tbi.scp.allowed_calling_ae_titles, ["PACS"]);
        assert_eq!(stroke.scp.allowed_calling_ae_titles, ["CT1"]);
        assert_eq!(tbi.storage.dir, std::path::Path::new("./data/tbi"));
        assert_eq!(tbi.storage.min_free_bytes, 1024);
        assert_eq!((tbi.upload.bucket.as_str(), tbi.upload.prefix.as_str()), ("shared", "tbi"));
        assert_eq!((stroke.upload.region.as_str(), stroke.upload.prefix.as_str()), ("eu-west-1", "research"));
        assert_eq!(stroke.project.pseudonyms, crate::config::PseudonymMode::Keyed);
        assert_eq!(tbi.project.pseudonyms, crate::config::PseudonymMode::Rsna);
    }

    #[test]
    fn projects_sharing_an_ae_title_site_or_directory_are_refused() {
        let yaml = "projects:
  - { name: A, ae_title: X, site_id: '1', storage: { dir: ./d } }
  - { name: B, ae_title: X, site_id: '1', storage: { dir: d/ } }";
        let Err(ParseError::Invalid(problems)) = parse(yaml) else { panic!("accepted") };
        let text = problems.join("\n");
        for key in ["projects[1].ae_title", "projects[1].site_id", "projects[1].storage.dir"] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
    }

    #[test]
    fn an_unknown_key_in_an_entry_names_the_entry_and_section() {
        let yaml = "projects:
  - { name: A, ae_title: X, site_id: '1', upload: { buckt: b } }
  - { name: B, ae_title: Y, site_id: '2', colour: blue, port: 5 }";
        let Err(ParseError::Invalid(problems)) = parse(yaml) else { panic!("accepted") };
        let text = problems.join("\n");
        assert!(text.contains("projects[0].upload: unknown field `buckt`"), "{text}");
        assert!(text.contains("projects[1]: unknown field `colour`"), "{text}");
        let yaml = "projects:\n  - { name: A, ae_title: X, site_id: '1', scp: { port: 5 } }";
        let Err(ParseError::Invalid(problems)) = parse(yaml) else { panic!("accepted") };
        assert!(problems[0].starts_with("projects[0].scp: node-wide"), "{problems:?}");
    }

    #[test]
    fn validation_problems_carry_the_project() {
        let yaml = "projects:\n  - { name: A, ae_title: X, site_id: 'abc' }\n  - { name: B, ae_title: Y, site_id: '2', upload: { enabled: true } }";
        let Err(ParseError::Invalid(problems)) = parse(yaml) else { panic!("accepted") };
        let text = problems.join("\n");
        assert!(text.contains("projects[0] (A).project.site_id"), "{text}");
        assert!(text.contains("projects[1] (B).upload.bucket"), "{text}");
    }

    /// The PostgreSQL index is shared and overridable per project; each project keeps a schema
    /// of its own, and two that would share one are refused.
    #[test]
    fn projects_share_a_database_but_never_a_schema() {
        let yaml = |b_index: &str| {
            format!(
                "index: {{ backend: postgres, url_env: DAG_URL }}\nprojects:
  - {{ name: TBI, ae_title: X, site_id: '1', storage: {{ dir: a }} }}
  - {{ name: Stroke, ae_title: Y, site_id: '2', storage: {{ dir: b }}{b_index} }}"
            )
        };
        let all = parse(&yaml("")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all[1].index.url_env.as_deref(), Some("DAG_URL"));
        let schemas: Vec<String> = all.iter().map(|c| c.index.schema_of(&c.project.name)).collect();
        assert_eq!(schemas, ["tbi", "stroke"]);
        let Err(ParseError::Invalid(problems)) = parse(&yaml(", index: { schema: tbi }")) else {
            panic!("two projects in one schema accepted")
        };
        assert!(problems.iter().any(|p| p.starts_with("projects[1].index.schema: \"tbi\"")), "{problems:?}");
        // On SQLite each project's index is in its own storage directory: no schema to share.
        assert!(parse(&yaml("").replace("backend: postgres, url_env: DAG_URL", "backend: sqlite")).is_ok());
    }

    #[test]
    fn one_project_or_a_list_never_both() {
        assert!(parse("project: { name: P, site_id: '1' }").is_ok());
        let both = "project: { name: P, site_id: '1' }\nprojects: [ { name: Q, ae_title: Q, site_id: '2' } ]";
        assert!(matches!(parse(both), Err(ParseError::Invalid(_))));
        assert!(matches!(parse("scp: { port: 1 }"), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn the_shipped_example_parses_into_its_two_projects() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-projects.yaml"))
                .unwrap();
        let all = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = all.iter().map(|c| (c.project.name.as_str(), c.scp.ae_title.as_str())).collect();
        assert_eq!(names, [("TBI", "TBI_ANON"), ("STROKE", "STROKE_ANON")]);
        assert_eq!(all[1].scp.modalities, ["CT", "MR"]);
        assert_eq!(all[0].upload.username, "tbi-uploader");
        assert_eq!(all[1].upload.prefix, "stroke");
        assert_eq!(all[0].upload.bucket, all[1].upload.bucket);
        assert!(all[0].scp.tls.as_ref().is_some_and(|t| t.port == 2762));
    }

    #[test]
    fn choosing_a_project_by_name() {
        let all = parse(TWO).unwrap();
        assert_eq!(choose(all.clone(), Some("STROKE")).unwrap().project.name, "STROKE");
        let err = choose(all.clone(), None).unwrap_err();
        assert!(err.contains("TBI, STROKE") && err.contains("--project"), "{err}");
        assert!(choose(all, Some("NOPE")).unwrap_err().contains("no such project"));
    }
}
