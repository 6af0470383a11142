//! Converts `../openapi.yaml` to JSON at build time, so the gateway serves
//! `GET /openapi.json` from a string baked into the .wasm, without a YAML parser at
//! run time. A YAML error fails the build, naming the problem.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=../openapi.yaml");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let source = manifest.join("../openapi.yaml");
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("could not read {}: {e}", source.display()));
    let spec: serde_json::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", source.display()));
    assert!(
        spec.get("openapi").and_then(|v| v.as_str()).is_some_and(|v| v.starts_with("3.1")),
        "openapi.yaml must be OpenAPI 3.1"
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("openapi.json");
    std::fs::write(&out, serde_json::to_string(&spec).expect("JSON"))
        .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}
