//! Decoding stored text columns into the ledger's types: a value no
//! writer produces is [`StoreError::Corrupt`], never a default.

use tally_ledger::Basis;

use crate::StoreError;

/// The basis stored as `text`; `what` names the row in the error
/// (`entry`, `generation`).
pub(crate) fn parse_basis(text: &str, what: &str) -> Result<Basis, StoreError> {
    text.parse::<Basis>()
        .ok()
        .ok_or_else(|| StoreError::Corrupt(format!("{what} basis {text:?}")))
}
