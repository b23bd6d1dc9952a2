"""Payment channels: alipay, wechatpay, and the built-in sandbox."""
