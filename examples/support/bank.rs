//! The bank shared by the `bank`, `server` and `bank_postgres` examples: `Account` entities,
//! the `Transfer` input and the plain `transfer` orchestration.

use entities::prelude::*;
use serde::{Deserialize, Serialize};

/// A bank account.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    balance: i64,
}

#[entity]
impl Account {
    /// Adds `amount` to the balance.
    pub fn deposit(&mut self, amount: i64) {
        self.balance += amount;
    }
    /// Takes `amount` from the balance; fails if the balance is smaller.
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        if amount > self.balance {
            return Err(format!(
                "insufficient funds: balance {}, asked {amount}",
                self.balance
            ));
        }
        self.balance -= amount;
        Ok(self.balance)
    }
    /// The balance.
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

/// The input of a transfer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Transfer {
    /// The account to take from.
    pub from: String,
    /// The account to pay into.
    pub to: String,
    /// How much to move.
    pub amount: i64,
}

/// Moves money between two accounts inside a critical section; returns whether it did.
pub async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, entities::Error> {
    let from = EntityId::of::<Account>(&t.from);
    let to = EntityId::of::<Account>(&t.to);
    let _section = ctx.lock(&[from, to]).await?;
    let balance = ctx.call::<Account>(&t.from).balance().await?;
    if balance < t.amount {
        return Ok(false);
    }
    ctx.call::<Account>(&t.from).withdraw(t.amount).await?;
    ctx.call::<Account>(&t.to).deposit(t.amount).await?;
    Ok(true)
}
