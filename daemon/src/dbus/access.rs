//! Who may do what: session owners, and administrators for card methods (uid 0, or
//! authorised by polkit for `org.vpud.Vpud1.manage-cards`).

use std::collections::HashMap;

use zbus::message::Header;
use zbus::names::BusName;
use zbus::{Connection, Variant};

use super::error::VpudError;

/// The polkit action that guards card administration and fault injection.
pub const MANAGE_CARDS_ACTION: &str = "org.vpud.Vpud1.manage-cards";

/// The caller's unique bus name.
pub fn caller(header: &Header<'_>) -> Result<String, VpudError> {
    header
        .sender()
        .map(|s| s.to_string())
        .ok_or_else(|| VpudError::AccessDenied("the call carries no sender".into()))
}

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Allows uid 0; asks polkit about everyone else. No polkit on the bus means no.
pub async fn require_admin(
    conn: &Connection,
    header: &Header<'_>,
    what: &str,
) -> Result<(), VpudError> {
    let sender = caller(header)?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus
        .get_connection_unix_user(BusName::try_from(sender.as_str())?)
        .await
        .map_err(|e| VpudError::AccessDenied(format!("cannot identify the caller: {e}")))?;
    if uid == 0 {
        return Ok(());
    }
    let authority = AuthorityProxy::new(conn).await?;
    let mut subject_details = HashMap::new();
    subject_details.insert("name", Variant::from(sender.as_str()));
    let answer = authority
        .check_authorization(
            &("system-bus-name", subject_details),
            MANAGE_CARDS_ACTION,
            HashMap::new(),
            0,
            "",
        )
        .await;
    match answer {
        Ok((true, _, _)) => Ok(()),
        Ok((false, _, _)) => Err(VpudError::AccessDenied(format!(
            "{what} needs root or the polkit action {MANAGE_CARDS_ACTION}, which uid {uid} is not granted"
        ))),
        Err(e) => Err(VpudError::AccessDenied(format!(
            "{what} needs root or the polkit action {MANAGE_CARDS_ACTION}; polkit could not be asked ({e}), so uid {uid} is refused"
        ))),
    }
}
