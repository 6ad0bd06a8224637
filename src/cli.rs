//! Command implementations that are more than a call into a module.

use std::path::Path;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::api;

/// `levee crd`: writes every CRD to `dir`, one file per kind.
pub fn write_crds(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        std::fs::write(&path, api::crd_yaml(&crd)?).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `levee crd --check`: fails, naming each file, when `dir` differs from what the code generates.
pub fn check_crds(dir: &Path) -> anyhow::Result<()> {
    let mut drifted = Vec::new();
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        let want = api::crd_yaml(&crd)?;
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => drifted.push(format!("{} differs from the code", path.display())),
            Err(e) => drifted.push(format!("{}: {e}", path.display())),
        }
    }
    if !drifted.is_empty() {
        bail!("CRDs are out of date (run `levee crd` and commit):\n  {}", drifted.join("\n  "));
    }
    println!("{} CRDs in {} match the code", api::crds().len(), dir.display());
    Ok(())
}

/// `levee crd --apply`: installs or updates every CRD by server-side apply.
pub async fn apply_crds() -> anyhow::Result<()> {
    let client = Client::try_default().await.context("no Kubernetes configuration: set KUBECONFIG")?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("levee").force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("cannot apply CRD {name}"))?;
        println!("applied {name}");
    }
    Ok(())
}
