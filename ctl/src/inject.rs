//! `vpuctl inject CARD KIND`: faults into emulated cards, for testing recovery.

use super::cli::InjectArgs;
use super::CtlError;
use vpud_client::{Client, FaultOptions};

/// Injects the fault and says what was done.
pub async fn inject(client: &Client, args: &InjectArgs) -> Result<String, CtlError> {
    let card = client.resolve_card(&args.card).await?;
    let kinds = client.fault_kinds(&card).await.map_err(|e| match e {
        e if e.is_unknown_object() => CtlError::Usage(format!(
            "card {} is not an emulated card (it has no org.vpud.Vpud1.Emulator interface)",
            args.card
        )),
        other => other.into(),
    })?;
    if !kinds.iter().any(|k| k == &args.kind) {
        return Err(CtlError::Usage(format!(
            "unknown fault kind `{}`; card {} accepts: {}",
            args.kind,
            args.card,
            kinds.join(", ")
        )));
    }
    let options = FaultOptions {
        engine: args.engine,
        count: args.count,
        duration_ms: args.duration_ms,
    };
    client.inject_fault(&card, &args.kind, options).await?;
    Ok(format!("injected {} into {}\n", args.kind, card.as_str()))
}
