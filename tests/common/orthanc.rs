//! Orthanc (Debian's `orthanc`) with its DICOMweb plugin (`orthanc-dicomweb`), run as our own
//! process on free ports with a JSON config of our own, stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::tool;

pub const PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

pub struct Orthanc {
    child: Option<Child>,
    pub http_port: u16,
    pub dicom_port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl Orthanc {
    /// Start with `servers` (name, DICOMweb base URL) as the DICOMweb servers it may send to.
    pub fn start(dir: &Path, servers: &[(&str, String)]) -> Orthanc {
        let (http_port, dicom_port) = (free_port(), free_port());
        Orthanc::start_on(dir, servers, http_port, dicom_port)
    }

    /// Start (again) on given ports, keeping what `dir` holds.
    pub fn start_on(dir: &Path, servers: &[(&str, String)], http_port: u16, dicom_port: u16) -> Orthanc {
        let orthanc = tool("/usr/sbin/Orthanc", "orthanc");
        tool(PLUGIN, "orthanc-dicomweb");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let servers: serde_json::Map<String, serde_json::Value> =
            servers.iter().map(|(name, url)| (name.to_string(), serde_json::json!([url]))).collect();
        let config = serde_json::json!({
            "Name": "ORTHANC-TEST",
            "StorageDirectory": dir.join("db"),
            "IndexDirectory": dir.join("db"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "HttpServerEnabled": true,
            "StorageCompression": false,
            "Plugins": [PLUGIN],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "Servers": servers },
        });
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(dir.join("orthanc.log")).unwrap();
        let child = Command::new(orthanc)
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("Orthanc starts");
        let mut o =
            Orthanc { child: Some(child), http_port, dicom_port, dir: dir.to_path_buf(), config: path };
        let deadline = Instant::now() + Duration::from_secs(60);
        while o.get("/system").0 != 200 {
            assert!(Instant::now() < deadline, "Orthanc never answered on {http_port}; log:\n{}", o.log());
            if let Some(status) = o.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Orthanc exited ({status}); log:\n{}", o.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// A GET with curl: the status and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        curl(&["-s", &self.url(path)])
    }

    /// A POST of `body` (a file or `-` with data) with curl: the status and the body.
    pub fn post(&self, path: &str, args: &[&str]) -> (u16, String) {
        let url = self.url(path);
        let mut all = vec!["-s", "-X", "POST"];
        all.extend_from_slice(args);
        all.push(&url);
        curl(&all)
    }

    /// Store `file` in Orthanc (its REST API); returns Orthanc's id of its study.
    pub fn upload(&self, file: &Path) -> String {
        let data = format!("@{}", file.display());
        let (code, body) = self.post("/instances", &["--data-binary", &data]);
        assert_eq!(code, 200, "Orthanc refused {file:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["ParentStudy"].as_str().unwrap().to_string()
    }

    /// Orthanc's instance ids.
    pub fn instances(&self) -> Vec<String> {
        let (code, body) = self.get("/instances");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The bytes Orthanc keeps of an instance.
    pub fn file(&self, id: &str) -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-s", "--fail", &self.url(&format!("/instances/{id}/file"))])
            .output()
            .unwrap();
        assert!(out.status.success(), "cannot read instance {id} back");
        out.stdout
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop, then start again on the same ports with what it stored.
    pub fn restart(&mut self, servers: &[(&str, String)]) {
        self.stop();
        let again = Orthanc::start_on(&self.dir, servers, self.http_port, self.dicom_port);
        let _ = &self.config;
        *self = again;
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// curl with `args`, printing the status code last: the status and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new(tool("/usr/bin/curl", "curl"))
        .args(args)
        .args(["-w", "\n%{http_code}", "--max-time", "120"])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
