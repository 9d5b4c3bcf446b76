//! Opening the ledger: the store, the checkpoint and the journal after it, the
//! control records, each shard's counters and retry windows, then the threads.

use super::*;

impl Ledger {
    /// Opens (or creates) the ledger in `path` and rebuilds memory from disk: card
    /// balances and states, merchants, terminals, and each terminal's retry window.
    ///
    /// # Errors
    /// [`LedgerError`] if the store will not open or holds a record this build cannot
    /// read.
    pub fn open(path: &Path, config: LedgerConfig) -> Result<Self, LedgerError> {
        Self::open_on(Arc::new(Store::open(path, config.shards)?), config)
    }

    /// Opens the ledger on a store already open: a cell's node keeps its store open
    /// while it follows (applying the log to it) and opens the ledger on it when it
    /// is elected. `config.shards` is not used: the store has its own count.
    ///
    /// # Errors
    /// As [`Ledger::open`].
    pub fn open_on(store: Arc<Store>, config: LedgerConfig) -> Result<Self, LedgerError> {
        let recovered = crate::checkpoint::recover(&store)?;
        let db = store.db();
        let meta = store.cf(CF_META);
        let today = config.clock_date();
        let stored = match db.get_cf(meta, KEY_BUSINESS_DATE)? {
            Some(bytes) => Some(
                be_u32(&bytes)
                    .and_then(BusinessDate::from_yyyymmdd)
                    .ok_or_else(|| corrupt("business date", hex::encode(&bytes)))?,
            ),
            None => None,
        };
        let date = stored.map_or(today, |stored| stored.max(today));
        let directory = Directory::default();
        let cards = CardTable::default();
        let mut control = ControlState {
            tail: Tail::after(CONTROL_JOURNAL, None),
            next_account: 1,
            next_merchant: 1,
            next_terminal: 1,
            blacklist_version: 0,
        };
        Self::load_control(
            &store,
            &config.master_key,
            &directory,
            &cards,
            &recovered.cards,
            &mut control,
        )?;
        let chain =
            crate::chain::load_or_store(&store, &config.master_key, || chain_starts(&store))?;
        control.tail = Tail::after(CONTROL_JOURNAL, last_batch(&store, CONTROL_JOURNAL)?.as_ref());
        let control_date = control.tail.last_date();
        let shards = store.shards();
        let blacklist_version = control.blacklist_version;
        let audit = AuditLog::open(&store, chain.key.clone())?;
        let settled = load_settled_dates(&store)?;
        let indexed = Arc::new(crate::checkpoint::index_watermarks(shards, &recovered));
        let metrics = Arc::new(Metrics::new(shards));
        let (checkpoint, checkpoint_queue) = bounded(CHECKPOINT_QUEUE_BATCHES_MAX);
        let intervals = Intervals {
            checkpoint: std::time::Duration::from_millis(config.checkpoint_interval_ms),
            index: std::time::Duration::from_millis(config.index_interval_ms),
        };
        let checkpointer = crate::checkpoint::start(
            Arc::clone(&store),
            checkpoint_queue,
            intervals,
            Arc::clone(&indexed),
            Arc::clone(&metrics),
        )
        .map_err(|source| LedgerError::Thread { name: "onecard-checkpoint".to_owned(), source })?;
        let base = Arc::new(Shared {
            store,
            cards,
            directory,
            chain,
            config,
            metrics,
            business_date: AtomicU32::new(date.to_yyyymmdd()),
            closed_through: AtomicU32::new(date.previous().to_yyyymmdd()),
            totals: Mutex::new(recovered.totals),
            indexed,
            checkpoint,
        });
        let shared = Arc::new(LedgerShared {
            base,
            audit,
            cutover: Mutex::new(()),
            settled: Mutex::new(settled),
            blacklist_version: AtomicU64::new(blacklist_version),
            control: Mutex::new(control),
        });
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        // Nothing is in flight yet, so every date before the latest one any journal
        // has committed, or the clock gives, is closed now.
        let mut open = date.max(control_date.unwrap_or(date));
        let mut recovered_shards = Vec::new();
        for shard in 0..shards {
            let recovered = recover_shard(&shared, shard)?;
            if let Some(last) = recovered.tail.last_date() {
                open = open.max(last);
            }
            recovered_shards.push(recovered);
        }
        shared.persist_dates(open)?;
        for (shard, recovered) in (0..shards).zip(recovered_shards) {
            let (sender, receiver) = bounded(SHARD_QUEUE_REQUESTS_MAX);
            let shard_stats = Arc::new(ShardStats::default());
            let writer = ShardWriter::new(
                shard,
                Arc::clone(&shared.base),
                receiver,
                Arc::clone(&shard_stats),
                recovered,
            );
            let name = format!("onecard-shard-{shard}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || writer.run())
                .map_err(|source| LedgerError::Thread { name, source })?;
            queues.push(sender);
            threads.push(thread);
            stats.push(shard_stats);
        }
        let ledger = Self { shared, queues, threads, checkpointer: Some(checkpointer), stats };
        ledger.activate_merchants(open).map_err(|error| corrupt("merchant", error))?;
        Ok(ledger)
    }

    pub(super) fn load_control(
        store: &Store,
        master_key: &MasterKey,
        directory: &Directory,
        cards: &CardTable,
        money: &HashMap<u64, CardMoney>,
        control: &mut ControlState,
    ) -> Result<(), LedgerError> {
        let db = store.db();
        let cf = store.cf(CF_CONTROL);
        let mut merchants = HashMap::new();
        let mut accounts: HashMap<u64, Arc<CardAccount>> = HashMap::new();
        let mut unsealed = WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            match key.first().copied() {
                Some(control_key::MERCHANT) => {
                    let record: MerchantRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("merchant", e))?;
                    control.next_merchant = control.next_merchant.max(record.id + 1);
                    merchants.insert(record.id, record.clone());
                    directory.insert_merchant(record);
                }
                Some(control_key::TERMINAL) => {
                    let record: TerminalRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("terminal", e))?;
                    let merchant = merchants.get(&record.merchant_id).ok_or_else(|| {
                        corrupt("terminal", format!("merchant {}", record.merchant_id))
                    })?;
                    control.next_terminal = control.next_terminal.max(record.id + 1);
                    let terminal = terminal_from(&record, merchant, master_key, directory)?;
                    if record.clear_key.is_some() {
                        let sealed = TerminalRecord {
                            sealed_key: master_key.seal(record.id, &terminal.key())?,
                            clear_key: None,
                            ..record
                        };
                        unsealed.put_cf(cf, key.as_ref(), json(&sealed));
                    }
                    directory.insert_terminal(terminal);
                }
                Some(control_key::ACCOUNT) => {
                    let record: AccountRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("account", e))?;
                    let money = money.get(&record.account_number).copied().unwrap_or_default();
                    control.next_account = control.next_account.max(record.account_number + 1);
                    let account = Arc::new(CardAccount::new(AccountState::new(record, money)));
                    accounts.insert(account.number, account);
                }
                Some(control_key::CARD) => {
                    let card_number =
                        be_u64(&key[1..]).ok_or_else(|| corrupt("card key", hex::encode(&key)))?;
                    let account_number = be_u64(&value[..8.min(value.len())])
                        .ok_or_else(|| corrupt("card", card_number))?;
                    let replaced_at_ms = value.get(8..16).and_then(be_u64).unwrap_or(0);
                    let account = accounts.get(&account_number).ok_or_else(|| {
                        corrupt("card", format!("{card_number} names no account"))
                    })?;
                    cards.insert_card(
                        card_number,
                        CardEntry { account: Arc::clone(account), replaced_at_ms },
                    );
                }
                Some(control_key::BLACKLIST) => {
                    let version = be_u64(&key[1..])
                        .ok_or_else(|| corrupt("blacklist key", hex::encode(&key)))?;
                    control.blacklist_version = control.blacklist_version.max(version);
                }
                _ => {}
            }
        }
        if !unsealed.is_empty() {
            // A store from before sealing: its keys are sealed now, in one synced write.
            let count = unsealed.len();
            store.write_synced(CONTROL_JOURNAL, unsealed)?;
            tracing::info!(terminals = count, "terminal keys sealed with the master key");
        }
        Ok(())
    }
}

/// The terminal a stored record describes, its key opened with the master key (or,
/// from a store written before sealing, read in the clear).
pub(super) fn terminal_from(
    record: &TerminalRecord,
    merchant: &MerchantRecord,
    master_key: &MasterKey,
    directory: &Directory,
) -> Result<Terminal, LedgerError> {
    let key = match &record.clear_key {
        Some(clear) => TerminalKey::from_hex(clear).map_err(|e| corrupt("terminal key", e))?,
        None => master_key.open(record.id, &record.sealed_key)?,
    };
    Ok(Terminal::new(
        record.id,
        merchant,
        directory.merchant_flag(merchant.id),
        key,
        record.enabled,
    ))
}

/// Where a store's chains begin, for a store that has no chain key yet: each journal's
/// next batch and the audit log's next record, or 1 for an empty one. A journal whose
/// last batch is already sealed (by a build that derived the key without storing it)
/// gets no start.
pub(super) fn chain_starts(store: &Store) -> Result<ChainStarts, LedgerError> {
    let mut starts = ChainStarts::default();
    let journals = (0..store.shards()).chain(std::iter::once(CONTROL_JOURNAL));
    for journal in journals {
        match last_batch(store, journal)? {
            None => {
                starts.journals.insert(journal, 1);
            }
            Some(batch) if batch.seal.is_none() => {
                starts.journals.insert(journal, batch.number + 1);
            }
            Some(_) => {}
        }
    }
    let mut audit = store.db().raw_iterator_cf(store.cf(crate::store::CF_AUDIT));
    audit.seek_to_last();
    audit.status()?;
    starts.audit = match (audit.key(), audit.value()) {
        (None, _) => 1,
        (Some(key), Some(value)) => {
            let sequence = <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes);
            let sealed = serde_json::from_slice::<crate::audit::AuditRecord>(value)
                .is_ok_and(|record| record.seal.is_some());
            if sealed || sequence == 0 { 0 } else { sequence + 1 }
        }
        (Some(_), None) => 0,
    };
    Ok(starts)
}

/// The last batch a journal committed.
pub(super) fn last_batch(store: &Store, journal: u8) -> Result<Option<Batch>, LedgerError> {
    let Some(key) = store.last_batch_key(journal)? else { return Ok(None) };
    let value = store.db().get_pinned_cf(store.cf(&journal_cf(journal)), key)?;
    let value = value.ok_or_else(|| corrupt("journal batch", "the last batch vanished"))?;
    Batch::decode(&value).map(Some).map_err(|e| corrupt("journal batch", e))
}

/// Reads back a shard: its next ids, and every terminal's retry window.
pub(super) fn recover_shard(shared: &Shared, shard: u8) -> Result<RecoveredShard, LedgerError> {
    let store = &shared.store;
    let last = last_batch(store, shard)?;
    let journal = store.cf(&journal_cf(shard));
    let mut states = Vec::new();
    for item in store.db().prefix_iterator_cf(journal, [shard_key::TERMINAL_STATE]) {
        let (key, value) = item?;
        if key.first() != Some(&shard_key::TERMINAL_STATE) {
            break;
        }
        let terminal =
            be_u32(&key[1..]).ok_or_else(|| corrupt("terminal state key", hex::encode(&key)))?;
        let state =
            TerminalState::decode(&value).ok_or_else(|| corrupt("terminal state", terminal))?;
        states.push((terminal, state));
    }
    let mut batches = HashMap::new();
    for (_, state) in &states {
        for key in &state.batches {
            if batches.contains_key(key) {
                continue;
            }
            let value = store.db().get_cf(journal, key)?.ok_or_else(|| {
                corrupt("terminal state", "names a batch that is not in the journal")
            })?;
            batches.insert(*key, Batch::decode(&value).map_err(|e| corrupt("journal batch", e))?);
        }
    }
    let mut windows = HashMap::new();
    for (terminal_id, state) in states {
        let window = rebuild_window(terminal_id, &state, &batches);
        if let Some(terminal) = shared.directory.terminal(terminal_id) {
            terminal.last_sequence.store(state.last_sequence, Ordering::Release);
            terminal.blacklist_version.store(state.blacklist_version, Ordering::Release);
        }
        windows.insert(terminal_id, window);
    }
    Ok(RecoveredShard { tail: Tail::after(shard, last.as_ref()), windows })
}

/// Every settled business date, from the settlement records' keys: read once, when the
/// ledger opens.
fn load_settled_dates(
    store: &Store,
) -> Result<std::collections::BTreeSet<BusinessDate>, LedgerError> {
    let prefix = [control_key::SETTLEMENT];
    let mut dates = std::collections::BTreeSet::new();
    let mut iter = store.db().raw_iterator_cf(store.cf(CF_CONTROL));
    iter.seek(prefix);
    while let Some(key) = iter.key() {
        if key.first() != Some(&control_key::SETTLEMENT) {
            break;
        }
        let date = key
            .get(1..5)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .and_then(BusinessDate::from_yyyymmdd)
            .ok_or_else(|| LedgerError::Corrupt {
                what: "settlement key",
                detail: hex::encode(key),
            })?;
        dates.insert(date);
        iter.next();
    }
    iter.status()?;
    Ok(dates)
}
