"""The app: the service behind the Gradio UI (detection once, gender, identity, drawing) and attendance."""
