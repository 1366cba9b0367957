//! Chat templates (placeholder until the HF-exact renderer lands).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, String> {
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", source.to_string()).map_err(|e| e.to_string())?;
        Ok(ChatTemplate { env, bos: bos_token.into(), eos: eos_token.into() })
    }
    pub fn render(&self, messages: &serde_json::Value, tools: Option<&serde_json::Value>, add_generation_prompt: bool) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        t.render(minijinja::context! { messages => minijinja::Value::from(minijinja::value::Serde(messages)), tools => minijinja::Value::from(minijinja::value::Serde(tools)), add_generation_prompt => add_generation_prompt, bos_token => self.bos.clone(), eos_token => self.eos.clone() }).map_err(|e| e.to_string())
    }
}
