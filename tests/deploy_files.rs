//! The deployment examples under `deploy/` parse, and agree with the plugin:
//! the driver name, the socket path the kubelet is told, the topology-aware
//! node-local provisioning flags of the sidecars, the `StorageClass`'s binding
//! mode and parameters the provider accepts, and the Nomad plugin id. No
//! cluster runs here; this keeps the files from rotting.

use std::path::Path;

use serde_yaml::Value;
use volmgr::csi::PLUGIN_NAME;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn has_node_name_env(c: &Value) -> bool {
    c["env"].as_sequence().is_some_and(|env| {
        env.iter().any(|e| {
            e["name"].as_str() == Some("NODE_NAME")
                && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")
        })
    })
}

#[test]
fn the_kubernetes_files_parse_and_match_the_plugin() {
    let driver = yaml_docs("deploy/kubernetes/csidriver.yaml");
    let d = of_kind(&driver, "CSIDriver");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["metadata"]["name"].as_str(), Some(PLUGIN_NAME));
    assert_eq!(d[0]["spec"]["attachRequired"].as_bool(), Some(false));

    let node = yaml_docs("deploy/kubernetes/node.yaml");
    let ds = of_kind(&node, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds[0];

    let volmgr = container(ds, "volmgr");
    let args = strs(&volmgr["args"]);
    assert_eq!(args.first(), Some(&"serve"));
    assert!(
        args.contains(&"--csi-endpoint=unix:///csi/csi.sock"),
        "{args:?}"
    );
    assert!(args.contains(&"--node-id=$(NODE_NAME)"), "{args:?}");
    assert!(has_node_name_env(volmgr));
    assert_eq!(
        volmgr["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let bidirectional = volmgr["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| {
            m["mountPath"].as_str() == Some("/var/lib/kubelet")
                && m["mountPropagation"].as_str() == Some("Bidirectional")
        });
    assert!(
        bidirectional,
        "the kubelet directory needs Bidirectional propagation"
    );

    let registrar = container(ds, "node-driver-registrar");
    let args = strs(&registrar["args"]);
    assert!(args.contains(&"--csi-address=/csi/csi.sock"));
    let registration =
        format!("--kubelet-registration-path=/var/lib/kubelet/plugins/{PLUGIN_NAME}/csi.sock");
    assert!(args.contains(&registration.as_str()), "{args:?}");
    let plugin_dir = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("plugin-dir"))
        .unwrap();
    assert_eq!(
        plugin_dir["hostPath"]["path"].as_str(),
        Some(format!("/var/lib/kubelet/plugins/{PLUGIN_NAME}").as_str())
    );

    let provisioner = container(ds, "csi-provisioner");
    let args = strs(&provisioner["args"]);
    assert!(args.contains(&"--node-deployment=true"), "{args:?}");
    assert!(args.contains(&"--strict-topology=true"), "{args:?}");
    assert!(
        has_node_name_env(provisioner),
        "--node-deployment needs NODE_NAME"
    );

    let snapshotter = container(ds, "csi-snapshotter");
    let args = strs(&snapshotter["args"]);
    assert!(args.contains(&"--node-deployment=true"), "{args:?}");
    assert!(has_node_name_env(snapshotter));

    let rbac = yaml_docs("deploy/kubernetes/rbac.yaml");
    assert_eq!(of_kind(&rbac, "ServiceAccount").len(), 1);
    assert_eq!(
        of_kind(&rbac, "ServiceAccount")[0]["metadata"]["name"],
        ds["spec"]["template"]["spec"]["serviceAccountName"]
    );

    let classes = yaml_docs("deploy/kubernetes/storageclass.yaml");
    let sc = of_kind(&classes, "StorageClass");
    assert!(!sc.is_empty());
    for c in sc {
        assert_eq!(c["provisioner"].as_str(), Some(PLUGIN_NAME));
        assert_eq!(
            c["volumeBindingMode"].as_str(),
            Some("WaitForFirstConsumer")
        );
        for (k, v) in c["parameters"].as_mapping().unwrap() {
            let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
            if k != "provider" {
                volmgr::provider::zfs::check_volume_option(k, v)
                    .unwrap_or_else(|e| panic!("parameter {k}={v}: {e}"));
            }
        }
    }

    let snap = yaml_docs("deploy/kubernetes/volumesnapshotclass.yaml");
    let vsc = of_kind(&snap, "VolumeSnapshotClass");
    assert_eq!(vsc.len(), 1);
    assert_eq!(vsc[0]["driver"].as_str(), Some(PLUGIN_NAME));
}

#[test]
fn the_nomad_files_parse_and_name_one_monolith_plugin() {
    let job: serde_json::Value = hcl::from_str(&read("deploy/nomad/volmgr-csi.nomad.hcl")).unwrap();
    let task = &job["job"]["volmgr-csi"]["group"]["plugin"]["task"]["volmgr"];
    assert_eq!(task["csi_plugin"]["type"], "monolith");
    assert_eq!(task["csi_plugin"]["id"], "volmgr");
    let mount_dir = task["csi_plugin"]["mount_dir"].as_str().unwrap();
    let args: Vec<&str> = task["config"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let endpoint = format!("--csi-endpoint=unix://{mount_dir}/csi.sock");
    assert!(args.contains(&endpoint.as_str()), "{args:?}");
    assert_eq!(task["config"]["privileged"], true);

    let volume: serde_json::Value = hcl::from_str(&read("deploy/nomad/volume.hcl")).unwrap();
    assert_eq!(volume["plugin_id"], "volmgr");
    assert_eq!(volume["type"], "csi");
    assert_eq!(volume["capability"]["access_mode"], "single-node-writer");
    assert_eq!(volume["capability"]["attachment_mode"], "file-system");
}
