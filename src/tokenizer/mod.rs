//! Tokenizers (see mod docs).
