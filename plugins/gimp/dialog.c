/* DPIR Restore's dialog: the model and the settings a retoucher needs first, the rest under Advanced, and a
 * preview that restores the visible part of the layer on demand.
 *
 * Every widget is bound to the procedure's config, so Reset, Load Saved Settings, Save Settings and Re-Show work
 * as in any GIMP filter. The config's arguments keep the script-facing convention (0 or -1: the model's value);
 * the dialog never shows it: such values are replaced by the chosen model's own, read from its dpir.json through
 * the C ABI, and a new model brings its own values.
 */

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "dpir-restore.h"

typedef struct
{
  GimpProcedureConfig *config;
  GimpDrawable        *drawable;
  LoadedModel         *loaded;

  GtkWidget           *dialog;
  GtkWidget           *ok_button;
  GtkWidget           *model_label;
  GtkWidget           *default_button;
  GtkWidget           *tile_size;
  GtkWidget           *tile_overlap;
  GtkWidget           *margin_label;
  GtkWidget           *margin;
  GtkWidget           *preview;
  GtkWidget           *preview_bar;
  GtkWidget           *preview_label;

  gboolean             model_ok;
  gchar               *model_path;      /* the folder of the model read last */
  gboolean             values_unset;    /* opened without a model: its values are still to come */
  dpir_bundle_info     model;
  dpir_bundle         *bundle;   /* owns model's strings */

  PixelFormat          preview_format;
  guchar              *context_data;
  dpir_pixels          context;
  guint                serial;          /* counts setting changes */
  gboolean             previewing;
  gboolean             preview_again;
  gboolean             cancel_preview;
  dpir_rect            preview_rect;    /* what the running or last preview restored, */
  guint                preview_serial;  /* with which settings */
  guchar              *shown_data;      /* the last preview's pixels, drawn again after a redraw, */
  dpir_pixels          shown;
  dpir_rect            shown_rect;      /* of this part of the layer */
  guint                shown_serial;    /* with these settings */
} Dialog;

/* The properties that change the restored pixels: a change re-runs the preview. */
static const gchar *const RESTORE_SETTINGS[] = {
  "model", "steps", "seed", "guidance", "tile-mode", "tile-size", "tile-overlap", "context-margin",
  "execution-provider", "max-memory",
};


/*  The model's values  */

/* Replaces the script-facing "the model's" values (0, -1) with the model's own; `all` replaces every value the
 * model has a default for (a new model). */
static void
take_model_values (Dialog   *d,
                   gboolean  all)
{
  gint    steps, seed, tile_size, tile_overlap, margin;
  gdouble guidance;

  if (! d->model_ok)
    return;
  g_object_get (d->config, "steps", &steps, "seed", &seed, "guidance", &guidance, "tile-size", &tile_size,
                "tile-overlap", &tile_overlap, "context-margin", &margin, NULL);
  if (all || steps == 0)
    g_object_set (d->config, "steps", (gint) d->model.default_steps, NULL);
  if (all || seed < 0)
    g_object_set (d->config, "seed", (gint) MIN (d->model.default_seed, (guint64) G_MAXINT), NULL);
  if (all || guidance == 0.0)
    g_object_set (d->config, "guidance", (gdouble) d->model.default_guidance, NULL);
  if (all || tile_size == 0)
    g_object_set (d->config, "tile-size", (gint) d->model.default_tile_pixels, NULL);
  if (all || tile_overlap < 0)
    g_object_set (d->config, "tile-overlap", (gint) d->model.default_overlap_pixels, NULL);
  if (all || margin < 0)
    g_object_set (d->config, "context-margin", (gint) d->model.default_overlap_pixels, NULL);
}

/* Tile sizes are multiples of the model's step; overlaps of its pixels per latent sample, below the tile. */
static void
update_tile_ranges (Dialog *d)
{
  gint size;

  if (! d->model_ok || d->tile_size == NULL)
    return;
  gtk_spin_button_set_range (GTK_SPIN_BUTTON (d->tile_size), d->model.tile_step_pixels, d->model.max_tile_pixels);
  gtk_spin_button_set_increments (GTK_SPIN_BUTTON (d->tile_size), d->model.tile_step_pixels,
                                  d->model.tile_step_pixels * 8);
  g_object_get (d->config, "tile-size", &size, NULL);
  gtk_spin_button_set_range (GTK_SPIN_BUTTON (d->tile_overlap), 0,
                             MAX (size - (gint) d->model.pixels_per_latent, 0));
  gtk_spin_button_set_increments (GTK_SPIN_BUTTON (d->tile_overlap), d->model.pixels_per_latent,
                                  d->model.pixels_per_latent * 4);
}

/* Reads the chosen model (or dpir's default) and says in the dialog which one will run, or why none can. A
 * model other than the one read before, or the first one when the dialog opened without any, brings its own
 * values. */
static void
read_model (Dialog *d)
{
  static const gchar *const FROM[] = { "chosen here", "from $" MODEL_ENV, "the default model" };
  gchar   *path = config_model_path (d->config);
  gchar   *text;
  gboolean new_model = FALSE;

  gchar   *last = NULL;
  gchar   *gone = NULL;

  /* A folder chosen before that has since gone: GIMP forgets it, the dialog names it. */
  g_object_get (d->config, "last-model", &last, NULL);
  if (path != NULL)
    g_object_set (d->config, "last-model", path, NULL);
  else if (last != NULL && *last != '\0' && ! g_file_test (last, G_FILE_TEST_EXISTS))
    gone = g_markup_printf_escaped ("The model folder chosen last, %s, no longer exists.\n", last);

  g_clear_pointer (&d->bundle, dpir_bundle_free);
  d->model_ok = FALSE;
  if (path != NULL && ! g_file_test (path, G_FILE_TEST_EXISTS))
    text = g_markup_printf_escaped ("<b>No model to run:</b> the model folder %s no longer exists. Choose "
                                    "another, or use the default model.", path);
  else if (dpir_bundle_open (path, &d->bundle) != DPIR_STATUS_OK)
    text = g_markup_printf_escaped ("<b>No model to run:</b> %s%s", gone != NULL ? gone : "",
                                    dpir_last_error_message ());
  else
    {
      dpir_bundle_get_info (d->bundle, &d->model, sizeof d->model);
      d->model_ok = TRUE;
      new_model   = d->model_path != NULL ? g_strcmp0 (d->model_path, d->model.path) != 0 : d->values_unset;
      g_free (d->model_path);
      d->model_path = g_strdup (d->model.path);
      text = g_markup_printf_escaped ("%s<b>%s</b>, %s\n<small>%s</small>", gone != NULL ? gone : "",
                                      d->model.model_name, FROM[MIN (d->model.source, 2)], d->model.path);
    }
  g_free (gone);
  g_free (last);
  if (! d->model_ok && d->model_path == NULL)
    d->values_unset = TRUE; /* the widgets then show their lowest values, not the model's */
  gtk_label_set_markup (GTK_LABEL (d->model_label), text);
  g_free (text);
  gtk_widget_set_sensitive (d->default_button, path != NULL);
  if (d->ok_button != NULL)
    gtk_widget_set_sensitive (d->ok_button, d->model_ok);
  g_free (path);

  take_model_values (d, new_model);
  update_tile_ranges (d);
}


/*  Reacting to changes  */

static void
on_setting_changed (GObject    *config,
                    GParamSpec *pspec,
                    Dialog     *d)
{
  if (g_strcmp0 (pspec->name, "model") == 0)
    read_model (d);
  else
    take_model_values (d, FALSE); /* Reset brings back the script-facing 0 and -1 */

  if (g_strcmp0 (pspec->name, "tile-size") == 0)
    update_tile_ranges (d);
  if (d->margin != NULL)
    {
      gboolean joint = gimp_procedure_config_get_choice_id (d->config, "tile-mode") == DPIR_TILE_MODE_JOINT;

      gtk_widget_set_sensitive (d->margin, joint);
      gtk_widget_set_sensitive (d->margin_label, joint);
    }
  for (gsize i = 0; i < G_N_ELEMENTS (RESTORE_SETTINGS); i++)
    if (g_strcmp0 (pspec->name, RESTORE_SETTINGS[i]) == 0)
      {
        d->serial++;
        if (d->preview != NULL)
          gimp_preview_invalidate (GIMP_PREVIEW (d->preview));
      }
}

static void
use_default_model (GtkButton *button,
                   Dialog    *d)
{
  g_object_set (d->config, "model", NULL, "last-model", "", NULL);
}

static void
new_seed (GtkButton *button,
          Dialog    *d)
{
  g_object_set (d->config, "seed", g_random_int_range (0, G_MAXINT), NULL);
}


/*  The preview  */

static gboolean
show_preview_progress (const dpir_progress *progress,
                       gpointer             data)
{
  Dialog *d = data;

  gtk_progress_bar_set_fraction (GTK_PROGRESS_BAR (d->preview_bar), progress->fraction);
  return ! d->cancel_preview;
}

static void
say_about_preview (Dialog      *d,
                   const gchar *text)
{
  gtk_label_set_text (GTK_LABEL (d->preview_label), text);
  while (gtk_events_pending ())
    gtk_main_iteration ();
}

/* Draws restored pixels in the preview, which takes them in the layer's channels at 8 bits. */
static void
draw_preview (Dialog            *d,
              guchar            *data,
              const dpir_pixels *restored)
{
  const Babl *shown = gimp_drawable_is_gray (d->drawable) && gimp_drawable_has_alpha (d->drawable)
                        ? babl_format ("Y'A u8") : d->preview_format.format;
  gsize       count = (gsize) restored->width * restored->height;
  guchar     *converted = NULL;

  if (shown != d->preview_format.format)
    {
      converted = g_malloc (count * babl_format_get_bytes_per_pixel (shown));
      babl_process (babl_fish (d->preview_format.format, shown), data, converted, (long) count);
      data = converted;
    }
  gimp_preview_draw_buffer (GIMP_PREVIEW (d->preview), data,
                            (gint) (restored->width * babl_format_get_bytes_per_pixel (shown)));
  g_free (converted);
}

/* The part of the layer the preview shows. */
static dpir_rect
visible_rect (Dialog *d)
{
  dpir_rect rect;
  gint      x, y, width, height;

  gimp_preview_get_position (GIMP_PREVIEW (d->preview), &x, &y);
  gimp_preview_get_size (GIMP_PREVIEW (d->preview), &width, &height);
  rect.x      = (guint32) CLAMP (x, 0, gimp_drawable_get_width (d->drawable) - 1);
  rect.y      = (guint32) CLAMP (y, 0, gimp_drawable_get_height (d->drawable) - 1);
  rect.width  = (guint32) CLAMP (width, 1, gimp_drawable_get_width (d->drawable) - (gint) rect.x);
  rect.height = (guint32) CLAMP (height, 1, gimp_drawable_get_height (d->drawable) - (gint) rect.y);
  return rect;
}

static gboolean
same_rect (const dpir_rect *a,
           const dpir_rect *b)
{
  return a->x == b->x && a->y == b->y && a->width == b->width && a->height == b->height;
}

/* Restores the part of the layer the preview shows and draws it there, with the time it took. */
static void
restore_preview (Dialog *d)
{
  const dpir_restorer  *restorer;
  dpir_restorer_info    running;
  dpir_restore_options  options;
  dpir_pixels           restored;
  dpir_status           status;
  GError               *error = NULL;
  guchar               *restored_data = NULL;
  gchar                *message = NULL;
  gchar                *text;
  gint64                start;

  d->preview_rect   = visible_rect (d);
  d->preview_serial = d->serial;
  if (d->shown_data != NULL && same_rect (&d->preview_rect, &d->shown_rect) && d->shown_serial == d->serial)
    {
      draw_preview (d, d->shown_data, &d->shown);
      return;
    }
  if (! d->model_ok)
    {
      say_about_preview (d, "No preview: choose a model first.");
      return;
    }
  say_about_preview (d, "Loading the model...");
  restorer = load_model (d->loaded, d->config, &error);
  if (restorer == NULL || ! options_from_config (d->config, &d->loaded->model, &options, &error))
    {
      say_about_preview (d, error->message);
      g_clear_error (&error);
      return;
    }

  if (d->context_data == NULL)
    {
      GeglBuffer *buffer = gimp_drawable_get_buffer (d->drawable);
      dpir_rect   whole  = { 0, 0, (guint32) gimp_drawable_get_width (d->drawable),
                             (guint32) gimp_drawable_get_height (d->drawable) };

      d->context_data = read_pixels (buffer, &d->preview_format, &whole, &d->context);
      g_object_unref (buffer);
      if (d->context_data == NULL)
        {
          say_about_preview (d, "No preview: not enough memory for this layer's pixels.");
          return;
        }
    }

  dpir_restorer_get_info (restorer, &running, sizeof running);
  text = g_strdup_printf ("Restoring the preview on %s...", running.execution_provider_name);
  say_about_preview (d, text);
  g_free (text);
  start  = g_get_monotonic_time ();
  status = restore_rect (restorer, d->drawable, &d->preview_format, &d->context, &d->preview_rect, &options,
                         show_preview_progress, d, TRUE, &restored_data, &restored, &message);
  gtk_progress_bar_set_fraction (GTK_PROGRESS_BAR (d->preview_bar), 0.0);

  if (status == DPIR_STATUS_OK)
    {
      g_free (d->shown_data);
      d->shown_data = restored_data;
      d->shown      = restored;
      d->shown_rect   = d->preview_rect;
      d->shown_serial = d->preview_serial;
      draw_preview (d, restored_data, &restored);
      text = g_strdup_printf ("Preview: %u x %u pixels restored in %.1f s on %s.", restored.width,
                              restored.height, (double) (g_get_monotonic_time () - start) / G_TIME_SPAN_SECOND,
                              running.execution_provider_name);
      say_about_preview (d, text);
      g_free (text);
      restored_data = NULL;
    }
  else if (status != DPIR_STATUS_CANCELLED)
    {
      set_dpir_error (&error, "no preview", status, message);
      say_about_preview (d, error->message);
      g_clear_error (&error);
    }
  g_free (restored_data);
  g_free (message);
}

/* GimpPreview asks for a new rendering after a scroll, a resize, a setting change or its Preview toggle. A
 * restore already running for other pixels or settings is cancelled and started again once it has stopped. */
static void
on_preview_invalidated (GimpPreview *preview,
                        Dialog      *d)
{
  if (! gimp_preview_get_update (preview))
    return;
  if (d->previewing)
    {
      dpir_rect now = visible_rect (d);

      if (! same_rect (&now, &d->preview_rect) || d->serial != d->preview_serial)
        {
          d->cancel_preview = TRUE;
          d->preview_again  = TRUE;
        }
      return;
    }
  d->previewing = TRUE;
  do
    {
      d->preview_again  = FALSE;
      d->cancel_preview = FALSE;
      restore_preview (d);
    }
  while (d->preview_again);
  d->previewing = FALSE;
}

static void
on_response (GtkDialog *dialog,
             gint       response,
             Dialog    *d)
{
  d->cancel_preview = TRUE; /* OK or Cancel while a preview runs */
  d->preview_again  = FALSE;
}

/* The preview's pixels: 8-bit, non-linear, as GIMP's preview draws them; gray with alpha travels as RGBA. */
static void
choose_preview_format (GimpDrawable *drawable,
                       PixelFormat  *format)
{
  gboolean gray  = gimp_drawable_is_gray (drawable);
  gboolean alpha = gimp_drawable_has_alpha (drawable);

  format->sample   = DPIR_SAMPLE_TYPE_U8;
  format->transfer = DPIR_TRANSFER_SRGB;
  format->channels = gray && ! alpha ? 1 : alpha ? 4 : 3;
  format->format   = babl_format (gray && ! alpha ? "Y' u8" : alpha ? "R'G'B'A u8" : "R'G'B' u8");
  format->bytes_per_pixel = babl_format_get_bytes_per_pixel (format->format);
}


/*  Building the dialog  */

/* Gives the preview's Preview toggle its mnemonic, Alt+P, which GIMP's drawable preview leaves out. */
static void
preview_mnemonic (GtkWidget *widget,
                  gpointer   data)
{
  if (GTK_IS_CHECK_BUTTON (widget))
    {
      gtk_button_set_label (GTK_BUTTON (widget), "_Preview");
      gtk_button_set_use_underline (GTK_BUTTON (widget), TRUE);
    }
  else if (GTK_IS_CONTAINER (widget))
    {
      gtk_container_foreach (GTK_CONTAINER (widget), preview_mnemonic, NULL);
    }
}

/* A label for `widget` in the grid's `row`, with a mnemonic. */
static GtkWidget *
attach_row (GtkWidget   *grid,
            gint         row,
            const gchar *label,
            GtkWidget   *widget,
            const gchar *tooltip)
{
  GtkWidget *text = gtk_label_new_with_mnemonic (label);

  gtk_label_set_xalign (GTK_LABEL (text), 0.0);
  gtk_label_set_mnemonic_widget (GTK_LABEL (text), widget);
  gtk_widget_set_hexpand (widget, TRUE);
  gtk_grid_attach (GTK_GRID (grid), text, 0, row, 1, 1);
  gtk_grid_attach (GTK_GRID (grid), widget, 1, row, 1, 1);
  gimp_help_set_help_data (widget, tooltip, NULL);
  gimp_help_set_help_data (text, tooltip, NULL);
  return text;
}

static GtkWidget *
new_grid (void)
{
  GtkWidget *grid = gtk_grid_new ();

  gtk_grid_set_row_spacing (GTK_GRID (grid), 6);
  gtk_grid_set_column_spacing (GTK_GRID (grid), 12);
  return grid;
}

/* A spin scale bound to `property` that takes `lower`..`upper` (the script-facing 0 or -1 below that is never
 * shown), its slider spanning the usual `lower`..`slider_upper`. */
static GtkWidget *
spin_scale (GObject     *config,
            const gchar *property,
            gdouble      lower,
            gdouble      upper,
            gdouble      slider_upper,
            gdouble      step,
            gint         digits)
{
  GtkWidget *spin = gimp_prop_spin_scale_new (config, property, step, step * 10, digits);

  gimp_spin_scale_set_label (GIMP_SPIN_SCALE (spin), NULL);
  gtk_spin_button_set_range (GTK_SPIN_BUTTON (spin), lower, upper);
  gimp_spin_scale_set_scale_limits (GIMP_SPIN_SCALE (spin), lower, slider_upper);
  return spin;
}

/* A spin button in pixels, from 0; `snap` keeps it on its increments (which the model sets). */
static GtkWidget *
pixel_spin (GObject     *config,
            const gchar *property,
            gboolean     snap)
{
  GtkWidget *spin = gimp_prop_spin_button_new (config, property, 8, 64, 0);
  GtkWidget *box  = gtk_box_new (GTK_ORIENTATION_HORIZONTAL, 6);

  /* The range first: snapping counts increments from its lower end. */
  gtk_spin_button_set_range (GTK_SPIN_BUTTON (spin), 0, 65536);
  gtk_spin_button_set_snap_to_ticks (GTK_SPIN_BUTTON (spin), snap);
  gtk_box_pack_start (GTK_BOX (box), spin, FALSE, FALSE, 0);
  gtk_box_pack_start (GTK_BOX (box), gtk_label_new ("pixels"), FALSE, FALSE, 0);
  g_object_set_data (G_OBJECT (box), "spin", spin);
  return box;
}

gboolean
restore_dialog (GimpProcedure       *procedure,
                GimpProcedureConfig *config,
                GimpImage           *image,
                GimpDrawable        *drawable,
                LoadedModel         *loaded,
                const gchar         *error_text)
{
  Dialog     d = { 0 };
  GObject   *cfg = G_OBJECT (config);
  GtkWidget *content, *vbox, *columns, *left, *right, *grid, *row, *chooser, *button, *expander, *box, *spin;
  gboolean   run;
  gint       n = 0;

  d.config   = config;
  d.drawable = drawable;
  d.loaded   = loaded;
  choose_preview_format (drawable, &d.preview_format);

  d.dialog = gimp_procedure_dialog_new (procedure, config, "DPIR Restore");
  gimp_window_set_transient (GTK_WINDOW (d.dialog));
  content = gtk_dialog_get_content_area (GTK_DIALOG (d.dialog));
  vbox    = gtk_box_new (GTK_ORIENTATION_VERTICAL, 12);
  gtk_container_set_border_width (GTK_CONTAINER (vbox), 12);
  gtk_box_pack_start (GTK_BOX (content), vbox, TRUE, TRUE, 0);

  if (error_text != NULL)
    {
      GtkWidget *bar   = gtk_info_bar_new ();
      GtkWidget *label = gtk_label_new (error_text);

      gtk_info_bar_set_message_type (GTK_INFO_BAR (bar), GTK_MESSAGE_ERROR);
      gtk_label_set_line_wrap (GTK_LABEL (label), TRUE);
      gtk_label_set_max_width_chars (GTK_LABEL (label), 60);
      gtk_label_set_xalign (GTK_LABEL (label), 0.0);
      gtk_container_add (GTK_CONTAINER (gtk_info_bar_get_content_area (GTK_INFO_BAR (bar))), label);
      gtk_box_pack_start (GTK_BOX (vbox), bar, FALSE, FALSE, 0);
    }

  /* The preview on the left, the settings on the right. */
  columns = gtk_box_new (GTK_ORIENTATION_HORIZONTAL, 18);
  left    = gtk_box_new (GTK_ORIENTATION_VERTICAL, 6);
  right   = gtk_box_new (GTK_ORIENTATION_VERTICAL, 12);
  gtk_box_pack_start (GTK_BOX (vbox), columns, TRUE, TRUE, 0);
  gtk_widget_set_valign (left, GTK_ALIGN_START);
  gtk_box_pack_start (GTK_BOX (columns), left, FALSE, FALSE, 0);
  gtk_box_pack_start (GTK_BOX (columns), right, TRUE, TRUE, 0);

  /* The model: what will run, before anything else. Connected before the widgets exist, so the model's values
   * replace a Reset's 0 and -1 before the widgets see them. */
  g_signal_connect (config, "notify", G_CALLBACK (on_setting_changed), &d);
  grid = new_grid ();
  gtk_box_pack_start (GTK_BOX (right), grid, FALSE, FALSE, 0);
  row     = gtk_box_new (GTK_ORIENTATION_HORIZONTAL, 6);
  chooser = gimp_prop_file_chooser_new (cfg, "model", "", "Choose a DPIR Model Folder");
  d.default_button = gtk_button_new_with_mnemonic ("Use the _default model");
  g_signal_connect (d.default_button, "clicked", G_CALLBACK (use_default_model), &d);
  gtk_box_pack_start (GTK_BOX (row), chooser, TRUE, TRUE, 0);
  gtk_box_pack_start (GTK_BOX (row), d.default_button, FALSE, FALSE, 0);
  attach_row (grid, n++, "_Model", row,
              "The DPIR model to run: a folder holding dpir.json, made from the official weights by dpir's "
              "converter. Without one, the plug-in takes $" MODEL_ENV ", then ~/.local/share/dpir/model.");
  gtk_label_set_mnemonic_widget (GTK_LABEL (gtk_grid_get_child_at (GTK_GRID (grid), 0, n - 1)), chooser);
  d.model_label = gtk_label_new (NULL);
  gtk_label_set_xalign (GTK_LABEL (d.model_label), 0.0);
  gtk_label_set_line_wrap (GTK_LABEL (d.model_label), TRUE);
  gtk_label_set_max_width_chars (GTK_LABEL (d.model_label), 50);
  gtk_label_set_selectable (GTK_LABEL (d.model_label), TRUE);
  gtk_grid_attach (GTK_GRID (grid), d.model_label, 1, n++, 1, 1);

  /* Basic settings. */
  read_model (&d);
  attach_row (grid, n++, "_Quality (steps)", spin_scale (cfg, "steps", 1, 1000, 100, 1, 0),
              "How many times the model refines the picture. More steps give finer, more faithful detail and "
              "take proportionally longer; few steps (4 to 10) give a quick, softer draft.");
  attach_row (grid, n++, "Prompt stren_gth", spin_scale (cfg, "guidance", 1, 100, 20, 0.5, 1),
              "How strongly the restoration is pushed towards a clean, sharp photograph. 1 is the model's "
              "natural result; higher values bring crisper texture but can look over-processed, and take twice "
              "as long.");
  attach_row (grid, n++, "Run o_n", gimp_prop_choice_combo_box_new (cfg, "execution-provider"),
              "Where the model runs. Best available takes the NVIDIA graphics card when its libraries load, "
              "else the processor; the progress bar says which one runs.");

  /* The preview, on demand: its Preview toggle starts off, since a restore takes a while. */
  d.preview = gimp_drawable_preview_new_from_drawable (drawable);
  gimp_preview_set_update (GIMP_PREVIEW (d.preview), FALSE);
  g_signal_connect (d.preview, "invalidated", G_CALLBACK (on_preview_invalidated), &d);
  preview_mnemonic (gimp_preview_get_controls (GIMP_PREVIEW (d.preview)), NULL);
  gtk_box_pack_start (GTK_BOX (left), d.preview, FALSE, FALSE, 0); /* its size stays as texts change */
  d.preview_bar = gtk_progress_bar_new ();
  gtk_box_pack_start (GTK_BOX (left), d.preview_bar, FALSE, FALSE, 0);
  d.preview_label = gtk_label_new ("Tick Preview to restore the part shown above with these settings.");
  gtk_label_set_xalign (GTK_LABEL (d.preview_label), 0.0);
  gtk_label_set_line_wrap (GTK_LABEL (d.preview_label), TRUE);
  gtk_label_set_max_width_chars (GTK_LABEL (d.preview_label), 36);
  gtk_box_pack_start (GTK_BOX (left), d.preview_label, FALSE, FALSE, 0);

  /* Advanced settings, folded away. */
  expander = gtk_expander_new_with_mnemonic ("_Advanced");
  gtk_box_pack_start (GTK_BOX (right), expander, FALSE, FALSE, 0);
  grid = new_grid ();
  gtk_widget_set_margin_top (grid, 6);
  gtk_container_add (GTK_CONTAINER (expander), grid);
  n = 0;
  attach_row (grid, n++, "_Tile mode", gimp_prop_choice_combo_box_new (cfg, "tile-mode"),
              "Large layers are restored in tiles. Independent: each tile on its own, so restoring a selection "
              "gives exactly the pixels of the whole layer. Joint: tiles agree at every step, for the most even "
              "texture across a large picture.");
  box = pixel_spin (cfg, "tile-size", TRUE);
  d.tile_size = g_object_get_data (G_OBJECT (box), "spin");
  attach_row (grid, n++, "Tile si_ze", box,
              "The side of one tile. Smaller tiles need less memory but see less of the picture at once.");
  box = pixel_spin (cfg, "tile-overlap", TRUE);
  d.tile_overlap = g_object_get_data (G_OBJECT (box), "spin");
  attach_row (grid, n++, "Tile o_verlap", box,
              "How far neighbouring tiles overlap. Wider overlaps hide seams between tiles and add a little "
              "work.");
  box = pixel_spin (cfg, "context-margin", FALSE);
  d.margin = g_object_get_data (G_OBJECT (box), "spin");
  d.margin_label = attach_row (grid, n++, "Conte_xt margin", box,
                               "Joint tile mode: how much of the layer around the selection is restored with "
                               "it, so the result blends with its surroundings.");
  row  = gtk_box_new (GTK_ORIENTATION_HORIZONTAL, 6);
  spin = gimp_prop_spin_button_new (cfg, "seed", 1, 1000, 0);
  gtk_spin_button_set_range (GTK_SPIN_BUTTON (spin), 0, G_MAXINT);
  button = gtk_button_new_with_mnemonic ("Ne_w seed");
  g_signal_connect (button, "clicked", G_CALLBACK (new_seed), &d);
  gtk_box_pack_start (GTK_BOX (row), spin, TRUE, TRUE, 0);
  gtk_box_pack_start (GTK_BOX (row), button, FALSE, FALSE, 0);
  attach_row (grid, n++, "S_eed", row,
              "The starting grain. The same seed and settings give the same result; a new seed gives another "
              "take on the fine detail.");
  gtk_label_set_mnemonic_widget (GTK_LABEL (gtk_grid_get_child_at (GTK_GRID (grid), 0, n - 1)), spin);
  spin = gimp_prop_spin_button_new (cfg, "max-memory", 0.5, 4, 1);
  attach_row (grid, n++, "Memor_y limit (GiB)", spin,
              "The most memory the restore may take (the graphics card's on a GPU); 0: no limit. Within a "
              "limit the model loads in parts and works in smaller tiles, or the plug-in says how much it "
              "needs.");
  update_tile_ranges (&d);
  on_setting_changed (cfg, g_object_class_find_property (G_OBJECT_GET_CLASS (cfg), "tile-mode"), &d);

  /* OK only while a model can run. */
  d.ok_button = gtk_dialog_get_widget_for_response (GTK_DIALOG (d.dialog), GTK_RESPONSE_OK);
  if (d.ok_button != NULL)
    gtk_widget_set_sensitive (d.ok_button, d.model_ok);
  g_signal_connect (d.dialog, "response", G_CALLBACK (on_response), &d);

  gtk_widget_show_all (d.dialog);
  run = gimp_procedure_dialog_run (GIMP_PROCEDURE_DIALOG (d.dialog));

  g_signal_handlers_disconnect_by_data (config, &d);
  gtk_widget_destroy (d.dialog);
  g_clear_pointer (&d.bundle, dpir_bundle_free);
  g_free (d.context_data);
  g_free (d.shown_data);
  g_free (d.model_path);
  return run;
}
