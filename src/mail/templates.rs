//! Message texts: built-in defaults, replaceable per application by files
//! in a folder (`DIR/{appId}/NAME` before `DIR/NAME` before the default),
//! where NAME is `{kind}.subject`, `{kind}.txt` or `{kind}.html` (kinds:
//! `username_reminder`, `password_reset`, `password_changed`,
//! `email_changed`, `verify_email`, `mfa_removed`) and
//! `{{app_name}}`, `{{username}}`, `{{reset_link}}`, `{{expires_minutes}}`,
//! `{{verify_link}}`, `{{expires_hours}}` are filled in (HTML-escaped in
//! `.html`).

use std::path::PathBuf;

use uuid::Uuid;

const DEFAULTS: &[(&str, &str)] = &[
    ("username_reminder.subject", include_str!("../../templates/mail/username_reminder.subject")),
    ("username_reminder.txt", include_str!("../../templates/mail/username_reminder.txt")),
    ("username_reminder.html", include_str!("../../templates/mail/username_reminder.html")),
    ("password_reset.subject", include_str!("../../templates/mail/password_reset.subject")),
    ("password_reset.txt", include_str!("../../templates/mail/password_reset.txt")),
    ("password_reset.html", include_str!("../../templates/mail/password_reset.html")),
    ("password_changed.subject", include_str!("../../templates/mail/password_changed.subject")),
    ("password_changed.txt", include_str!("../../templates/mail/password_changed.txt")),
    ("password_changed.html", include_str!("../../templates/mail/password_changed.html")),
    ("email_changed.subject", include_str!("../../templates/mail/email_changed.subject")),
    ("email_changed.txt", include_str!("../../templates/mail/email_changed.txt")),
    ("email_changed.html", include_str!("../../templates/mail/email_changed.html")),
    ("verify_email.subject", include_str!("../../templates/mail/verify_email.subject")),
    ("verify_email.txt", include_str!("../../templates/mail/verify_email.txt")),
    ("verify_email.html", include_str!("../../templates/mail/verify_email.html")),
    ("mfa_removed.subject", include_str!("../../templates/mail/mfa_removed.subject")),
    ("mfa_removed.txt", include_str!("../../templates/mail/mfa_removed.txt")),
    ("mfa_removed.html", include_str!("../../templates/mail/mfa_removed.html")),
];

#[derive(Debug, Clone, Default)]
pub struct Templates {
    dir: Option<PathBuf>,
}

/// A rendered message.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Templates {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    async fn load(&self, app_id: Uuid, name: &str) -> String {
        if let Some(dir) = &self.dir {
            for path in [dir.join(app_id.to_string()).join(name), dir.join(name)] {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    return text;
                }
            }
        }
        DEFAULTS.iter().find(|(n, _)| *n == name).map(|(_, t)| (*t).to_owned()).unwrap_or_default()
    }

    pub async fn render(&self, app_id: Uuid, kind: &str, values: &[(&str, &str)]) -> Rendered {
        let fill = |template: String, escape: bool| {
            values.iter().fold(template, |t, (k, v)| {
                let v = if escape { html_escape(v) } else { (*v).to_owned() };
                t.replace(&format!("{{{{{k}}}}}"), &v)
            })
        };
        let subject = fill(self.load(app_id, &format!("{kind}.subject")).await, false);
        Rendered {
            // One line: a header cannot carry a line break.
            subject: subject.lines().next().unwrap_or_default().trim().to_owned(),
            text: fill(self.load(app_id, &format!("{kind}.txt")).await, false),
            html: fill(self.load(app_id, &format!("{kind}.html")).await, true),
        }
    }
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn change_notices_say_what_changed_and_what_to_do() {
        let t = Templates::default();
        let values = [("app_name", "Clinic"), ("username", "ada")];
        let p = t.render(Uuid::nil(), crate::store::PASSWORD_CHANGED, &values).await;
        assert_eq!(p.subject, "Your Clinic password was changed");
        assert!(p.text.contains("If this was not you") && p.html.contains("If this was not you"), "{}", p.text);
        let e = t.render(Uuid::nil(), crate::store::EMAIL_CHANGED, &values).await;
        assert_eq!(e.subject, "The email address of your Clinic account was changed");
        assert!(e.text.contains("If this was not you") && e.html.contains("If this was not you"), "{}", e.text);
        for r in [&p, &e] {
            assert!(!r.text.contains("{{") && !r.html.contains("{{"), "every placeholder filled");
        }
    }

    #[tokio::test]
    async fn defaults_fill_and_escape() {
        let r = Templates::default()
            .render(Uuid::nil(), "username_reminder", &[("app_name", "Clinic"), ("username", "<ada>")])
            .await;
        assert_eq!(r.subject, "Your username for Clinic");
        assert!(r.text.contains("Your username is: <ada>"));
        assert!(r.html.contains("&lt;ada&gt;") && !r.html.contains("<ada>"));
    }

    #[tokio::test]
    async fn a_folder_overrides_per_application() {
        let dir = std::env::temp_dir().join(format!("usersvc-tpl-{}", Uuid::new_v4()));
        let app = Uuid::new_v4();
        std::fs::create_dir_all(dir.join(app.to_string())).unwrap();
        std::fs::write(dir.join("username_reminder.subject"), "Everyone: {{app_name}}").unwrap();
        std::fs::write(dir.join(app.to_string()).join("username_reminder.subject"), "Just us: {{app_name}}").unwrap();
        let t = Templates::new(Some(dir.clone()));
        assert_eq!(t.render(app, "username_reminder", &[("app_name", "A")]).await.subject, "Just us: A");
        assert_eq!(t.render(Uuid::new_v4(), "username_reminder", &[("app_name", "B")]).await.subject, "Everyone: B");
        std::fs::remove_dir_all(dir).ok();
    }
}
