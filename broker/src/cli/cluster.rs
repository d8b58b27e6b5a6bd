//! `shardlog cluster describe`: the cluster id, the controller (the metadata quorum's
//! leader) and every broker with its address, from DescribeCluster (fenced brokers included
//! at v2, which lists them with `is_fenced`).
//!
//! What this module must never do: ask about topics (Metadata is not needed, and a tool
//! never risks auto-creating one).

use anyhow::{bail, Result};
use kafka_protocol::messages::DescribeClusterRequest;
use serde_json::{json, Value};

use super::output::{print, Table};
use super::session::{error_name, Session};
use super::{ClusterAction, ClusterCommand, Common};

/// The client id of the tool's requests.
const CLIENT_ID: &str = "shardlog-cluster";

/// Runs a `shardlog cluster` command; prints to stdout, errors are returned.
pub fn run(command: ClusterCommand) -> Result<()> {
    let Common { bootstrap, format } = command.common;
    let mut session = Session::connect(&bootstrap, CLIENT_ID)?;
    match command.action {
        ClusterAction::Describe => {}
    }
    let version = session.version_of::<DescribeClusterRequest>()?;
    let request = DescribeClusterRequest::default().with_include_fenced_brokers(version >= 2);
    let response = session.send(&request)?;
    if response.error_code != 0 {
        let detail = response
            .error_message
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        bail!(
            "DescribeCluster: {}{detail}",
            error_name(response.error_code)
        );
    }
    let controller = response.controller_id.0;
    let mut brokers = Table::new(&["broker", "address", "rack", "fenced", "controller"]);
    let mut listed: Vec<_> = response.brokers.iter().collect();
    listed.sort_by_key(|b| b.broker_id.0);
    for b in listed {
        let fenced = if version >= 2 {
            json!(b.is_fenced)
        } else {
            Value::Null
        };
        brokers.row(vec![
            json!(b.broker_id.0),
            json!(format!("{}:{}", b.host, b.port)),
            json!(b.rack.as_ref().map(|r| r.to_string())),
            fenced,
            json!(b.broker_id.0 == controller),
        ]);
    }
    print(
        format,
        &[
            ("cluster_id", json!(response.cluster_id.to_string()), None),
            ("controller", json!(controller), None),
            ("asked", json!(session.bootstrap()), None),
            ("brokers", Value::Null, Some(&brokers)),
        ],
    );
    Ok(())
}
